"""What the named configurations of :mod:`fftd_course.ivqvae` and :mod:`fftd_course.fftd` share."""

from __future__ import annotations

import dataclasses
from typing import Mapping, TypeVar

import torch
from torch import nn

__all__ = ["named_config", "count_parameters", "check_eps_inputs", "xavier_init"]

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


def check_eps_inputs(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, shape: tuple[int, int, int],
                     num_classes: int, who: str, remedy: str, what: str = "inputs") -> None:
    """Clear errors for inputs a noise predictor ``model(x_t, t, y)`` cannot take (the FFTD's and the U-Net's).

    Shapes are always checked (free, and static under ``torch.compile``); values only for CPU tensors outside
    compilation, where reading them costs no device synchronisation. ``shape`` is one sample's ``(C, H, W)``;
    ``what`` names the inputs (latents, images) and ``remedy`` ends the shape error with what to change.
    """
    if not isinstance(x_t, torch.Tensor) or x_t.ndim != 4 or tuple(x_t.shape[1:]) != tuple(shape):
        raise ValueError(f"{who} expects {what} of shape (B, {shape[0]}, {shape[1]}, {shape[2]}), got "
                         f"{tuple(getattr(x_t, 'shape', ()))}; {remedy}")
    b = x_t.shape[0]
    if not isinstance(t, torch.Tensor) or t.shape != (b,) or t.is_floating_point():
        raise ValueError(f"t must be an integer tensor of shape ({b},), one 0-based timestep per sample, "
                         f"got {getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (b,) or y.is_floating_point()):
        raise ValueError(f"y must be an integer tensor of shape ({b},) or None, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
    if torch.compiler.is_compiling() or b == 0:
        return
    if t.device.type == "cpu" and int(t.min()) < 0:
        raise ValueError(f"timesteps are 0-based and non-negative, got {int(t.min())}")
    if y is not None and y.device.type == "cpu" and (int(y.min()) < 0 or int(y.max()) > num_classes):
        kind = (f"{num_classes} classes; label {num_classes} is the null label" if num_classes else
                "an unconditional model: only the null label 0")
        raise ValueError(f"labels must lie in [0, {num_classes}] ({kind}), got values from {int(y.min())} to "
                         f"{int(y.max())}")


def xavier_init(m: nn.Module) -> None:
    """The first step of the FFTD's and the U-Net's ``initialize_weights`` (``module.apply(xavier_init)``):
    Xavier-uniform weights and zero biases for every linear and convolution layer."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
