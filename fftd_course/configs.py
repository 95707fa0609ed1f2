"""What the named configurations of :mod:`fftd_course.ivqvae` and :mod:`fftd_course.fftd` share."""

from __future__ import annotations

import dataclasses
from typing import Mapping, TypeVar

from torch import nn

__all__ = ["named_config", "count_parameters"]

C = TypeVar("C")


def named_config(configs: Mapping[str, C], name: str, what: str, **overrides) -> C:
    """``configs[name]`` with fields replaced by ``overrides``; clear errors for an unknown name or field.

    The dataclass's own ``__post_init__`` validates the result, so a bad value is refused by name there.
    """
    if name not in configs:
        raise ValueError(f"unknown {what} configuration {name!r}; choose one of {sorted(configs)}")
    base = configs[name]
    try:
        return dataclasses.replace(base, **overrides)
    except TypeError as e:
        fields = sorted(f.name for f in dataclasses.fields(base))
        raise ValueError(f"{e}; {type(base).__name__} fields are {fields}") from None


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
