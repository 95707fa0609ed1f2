"""Checks for chapter 00 (setup and tour): image ranges, per-channel standardisation, image bytes."""

from __future__ import annotations

from typing import Callable

import torch

from ..viz import to_unit_range
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check


def check_to_unit_range(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn`` maps images from [-1, 1] to [0, 1] like :func:`fftd_course.viz.to_unit_range`."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(3, 8, 8), (2, 3, 5, 7), (4, 1, 16, 16)]:
            x = torch.rand(shape, generator=g) * 2 - 1
            compare(fn(x), to_unit_range(x), f"to_unit_range on a {shape} batch")
        corners = torch.tensor([-1.0, 0.0, 1.0])
        compare(fn(corners), torch.tensor([0.0, 0.5, 1.0]), "to_unit_range of [-1, 0, 1]")

    return run_check("to_unit_range", trial, hint="-1 must become 0 and 1 must stay 1: two numbers fix an affine map; which shift and which scale?")


def _standardize(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)


def check_standardize_channels(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(images)`` gives every channel of a ``(B, C, H, W)`` batch mean 0 and (population) std 1 over ``(B, H, W)``."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(8, 3, 4, 4), (2, 3, 3, 2), (5, 4, 2, 3), (1, 2, 3, 3)]:
            # channels with different offsets and scales, so that a statistic over the wrong axes shows
            x = torch.randn(shape, generator=g) * (1 + torch.arange(shape[1])).view(1, -1, 1, 1) \
                + 3 * torch.arange(shape[1]).view(1, -1, 1, 1)
            compare(fn(x.clone()), _standardize(x), f"standardize_channels of a {shape} batch")

    return run_check("standardize_channels", trial,
                     hint="one mean and one standard deviation per CHANNEL, each over the batch and every pixel; "
                          "the formula's s_c divides by B*H*W, not B*H*W - 1 (small batches show the difference).")


def _to_pixels(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().permute(1, 2, 0).to(torch.uint8)


def check_to_pixels(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(x)``: ``(C, H, W)`` in [-1, 1] to ``(H, W, C)`` uint8, -1 -> 0, 1 -> 255, rounded to the nearest integer."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(3, 4, 5), (3, 8, 8), (1, 3, 2)]:
            x = torch.rand(shape, generator=g) * 2 - 1
            x.view(-1)[:3] = torch.tensor([-1.0, 1.0, 0.0])[: x.numel()]
            got = fn(x.clone())
            if isinstance(got, torch.Tensor) and got.dtype != torch.uint8:
                raise CheckFailure(f"the result must be bytes (torch.uint8), got {got.dtype}")
            compare(got, _to_pixels(x), f"to_pixels of a {shape} image", atol=0, rtol=0)

    return run_check("to_pixels", trial,
                     hint="compare the first row of your output with the first row of the image: does a view move "
                          "any value, or only reinterpret the memory? Then check a value like 254.9: what does the "
                          "conversion to bytes make of it?")
