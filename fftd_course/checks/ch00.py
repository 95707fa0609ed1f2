"""Checks for chapter 00 (setup and tour)."""

from __future__ import annotations

from typing import Callable

import torch

from ..viz import to_unit_range
from .core import CheckResult, compare, fresh_seed, run_check


def check_to_unit_range(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn`` maps images from [-1, 1] to [0, 1] like :func:`fftd_course.viz.to_unit_range`."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(3, 8, 8), (2, 3, 5, 7), (4, 1, 16, 16)]:
            x = torch.rand(shape, generator=g) * 2 - 1
            compare(fn(x), to_unit_range(x), f"to_unit_range on a {shape} batch")
        corners = torch.tensor([-1.0, 0.0, 1.0])
        compare(fn(corners), torch.tensor([0.0, 0.5, 1.0]), "to_unit_range of [-1, 0, 1]")

    return run_check("to_unit_range", trial, hint="-1 must become 0 and 1 must stay 1: shift, then scale.")


def check_channel_mean(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(images)`` returns the mean of each channel over the batch and all pixels, shape ``(C,)``."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(8, 3, 4, 4), (1, 3, 6, 5), (5, 4, 2, 3)]:
            x = torch.randn(shape, generator=g) + torch.arange(shape[1]).view(1, -1, 1, 1)
            compare(fn(x), x.mean(dim=(0, 2, 3)), f"channel_mean of a {shape} batch")

    return run_check("channel_mean", trial, hint="average over every dimension except dim 1 (the channels).")
