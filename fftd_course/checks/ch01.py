"""Checks for chapter 01 (residual blocks, eq. 1-3, 6, 7)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..blocks import ResBlock, Upsample, swish
from .core import CheckFailure, CheckResult, compare, fresh_seed, load_reference_weights, run_check


def _compare_module(learner: nn.Module, reference: nn.Module, x: torch.Tensor, what: str) -> None:
    """Same outputs and the same gradient with respect to the input."""
    load_reference_weights(learner, reference)
    x_l, x_r = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_l, out_r = learner(x_l), reference(x_r)
    compare(out_l, out_r, f"{what}: output")
    weight = torch.randn_like(out_r)
    (out_l * weight).sum().backward()
    (out_r * weight).sum().backward()
    if x_l.grad is None:
        raise CheckFailure(f"{what}: no gradient reached the input (did you detach or use .data?)")
    compare(x_l.grad, x_r.grad, f"{what}: gradient with respect to the input")


def check_swish(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn`` is Swish, ``x * sigmoid(x)`` (eq. 2), with the right gradient."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(7,), (2, 3, 4, 4), (1, 8, 5, 3)]:
            x = (torch.randn(shape, generator=g) * 4).requires_grad_(True)
            x_ref = x.detach().clone().requires_grad_(True)
            y = fn(x)
            compare(y, swish(x_ref), f"swish on a {shape} input")
            y.sum().backward()
            swish(x_ref).sum().backward()
            compare(x.grad, x_ref.grad, f"gradient of swish on a {shape} input")

    return run_check("swish", trial, hint="Swish(x) = x * sigmoid(x); torch.sigmoid is allowed.")


def check_resblock(cls: type[nn.Module]) -> CheckResult:
    """``cls(in_channels, out_channels, num_groups=...)`` behaves like :class:`fftd_course.blocks.ResBlock`."""

    def trial() -> None:
        seed = fresh_seed()
        torch.manual_seed(seed)
        for c_in, c_out, size in [(16, 16, (8, 8)), (16, 32, (6, 10)), (32, 16, (4, 4))]:
            x = torch.randn(2, c_in, *size)
            learner, reference = cls(c_in, c_out, num_groups=8), ResBlock(c_in, c_out, num_groups=8)
            _compare_module(learner, reference, x, f"ResBlock({c_in} -> {c_out}) on a {tuple(x.shape)} input")

    return run_check("ResBlock.forward", trial,
                     hint="two (norm, swish, conv) units, dropout before conv2, then add self.shortcut(x): the skip.")


def check_upsample(cls: type[nn.Module]) -> CheckResult:
    """``cls(channels)`` behaves like :class:`fftd_course.blocks.Upsample` (eq. 6)."""

    def trial() -> None:
        torch.manual_seed(fresh_seed())
        for c, size in [(4, (3, 3)), (8, (4, 6)), (16, (1, 1))]:
            x = torch.randn(2, c, *size)
            _compare_module(cls(c), Upsample(c), x, f"Upsample({c}) on a {tuple(x.shape)} input")

    return run_check("Upsample.forward", trial,
                     hint="F.interpolate(x, scale_factor=2, mode='nearest') first, then self.conv.")
