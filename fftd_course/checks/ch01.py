"""Checks for chapter 01 (residual blocks, eq. 1-3, 6, 7): Swish's derivative, the post-activation block, GroupNorm."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import blocks
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, learner_code, load_reference_weights, run_check, yours


def _compare_module(learner: nn.Module, reference: nn.Module, x: torch.Tensor, what: str) -> None:
    """Same outputs and the same gradient with respect to the input (the learner's forward runs as learner code)."""
    load_reference_weights(learner, reference)
    x_l, x_r = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with learner_code(type(learner)):
        out_l = learner(x_l)
    out_r = reference(x_r)
    compare(out_l, out_r, f"{what}: output")
    weight = torch.randn_like(out_r)
    (out_l * weight).sum().backward()
    (out_r * weight).sum().backward()
    if x_l.grad is None:
        raise CheckFailure(f"{what}: no gradient reached the input (did you detach or use .data?)")
    compare(x_l.grad, x_r.grad, f"{what}: gradient with respect to the input")


def check_swish_derivative(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(x)`` is the derivative of Swish (eq. 2's non-linearity), elementwise, without autograd."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(7,), (2, 3, 4, 4), (1, 8, 5, 3)]:
            x = torch.randn(shape, generator=g) * 4
            x_ref = x.clone().requires_grad_(True)
            (want,) = torch.autograd.grad(blocks.swish(x_ref).sum(), x_ref)
            got = fn(x.clone())
            if isinstance(got, torch.Tensor) and got.requires_grad:
                raise CheckFailure("the result requires grad: write the derivative as a formula, without autograd")
            compare(got, want, f"Swish'(x) on a {shape} input")

    return run_check("swish_derivative", trial,
                     hint="Swish is a product of two functions of x: differentiate both factors. What is Swish' at "
                          "x = 0 (it must be 1/2), and does your formula tend to 0 for large negative x?",
                     forbid=["fftd_course.blocks.swish", "fftd_course.blocks.Swish.forward"])


def check_post_activation_block(cls: type[nn.Module]) -> CheckResult:
    """``cls(in_channels, out_channels, num_groups=...)``: the original ResNet's order, Swish after the sum.

    ``Swish(s(x) + GN2(Conv2(Swish(GN1(Conv1(x))))))``, with ``s`` the identity or a 1x1 convolution when the
    channel count changes; compared with a hidden reference (output and gradient) on inputs with an offset and
    a scale, so that a missing or misplaced normalisation or activation shows.
    """

    class PostActivationBlock(nn.Module):  # the hidden answer, with the skeleton's layer names
        def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            self.norm1 = blocks.group_norm(out_channels, num_groups)
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            self.norm2 = blocks.group_norm(out_channels, num_groups)
            self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = blocks.swish(self.norm1(self.conv1(x)))
            return blocks.swish(self.shortcut(x) + self.norm2(self.conv2(h)))

    def trial() -> None:
        torch.manual_seed(fresh_seed())
        for c_in, c_out, size in [(16, 16, (8, 8)), (16, 32, (6, 10)), (32, 16, (4, 4))]:
            x = torch.randn(2, c_in, *size) * 2 + 0.5
            with learner_code(cls):
                learner = cls(c_in, c_out, num_groups=8)
            reference = PostActivationBlock(c_in, c_out, num_groups=8)
            with torch.no_grad():  # GroupNorm's gamma and beta away from 1 and 0, so that each norm's place shows
                for norm in (reference.norm1, reference.norm2):
                    norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
            _compare_module(learner, reference, x, f"PostActivationBlock({c_in} -> {c_out}) on a {tuple(x.shape)} input")

    return run_check("PostActivationBlock.forward", trial,
                     hint="read the formula from the inside out: here each convolution comes FIRST and its "
                          "GroupNorm after it, and the last Swish acts on the SUM, so nothing on the skip path is "
                          "left untouched. What does the skip carry when the channel count changes?",
                     forbid=["fftd_course.blocks.ResBlock.forward"])


def check_group_norm(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(x, groups, weight, bias, eps)`` equals ``F.group_norm`` (groups of neighbouring channels, biased variance).

    A find-the-bug exercise with two bugs, each with its own sub-test: the grouping (compared with either
    variance) and the variance (one group, where every grouping agrees).
    """
    fn = yours(fn)

    def inputs(g: torch.Generator, b: int, c: int, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        # channels with very different means and scales, so that the grouping shows
        x = torch.randn(b, c, *size, generator=g) * torch.linspace(0.5, 3, c).view(1, c, 1, 1) \
            + torch.linspace(-2, 2, c).view(1, c, 1, 1)
        return x, torch.randn(c, generator=g), torch.randn(c, generator=g)

    def close(got: object, want: torch.Tensor) -> bool:
        return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4)

    def remaining() -> int:
        g = torch.Generator().manual_seed(fresh_seed())
        x, w, b = inputs(g, 2, 8, (2, 2))
        try:
            got = fn(x.clone(), 2, w, b, 1e-6)
            groups = x.unflatten(1, (2, 4))
            mean = groups.mean(dim=(2, 3, 4), keepdim=True)
            either = [((groups - mean) / torch.sqrt(groups.var(dim=(2, 3, 4), keepdim=True, unbiased=u) + 1e-6))
                      .flatten(1, 2) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1) for u in (False, True)]
            grouping = not any(close(got, want) for want in either)
        except Exception:
            grouping = True
        try:
            variance = not close(fn(x.clone(), 1, w, b, 1e-6), F.group_norm(x, 1, w, b, 1e-6))
        except Exception:
            variance = True
        return int(grouping) + int(variance)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for b, c, groups, size in [(2, 8, 2, (2, 2)), (3, 12, 3, (1, 3)), (1, 32, 8, (4, 4)), (2, 6, 6, (3, 2))]:
            x, weight, bias = inputs(g, b, c, size)
            compare(fn(x.clone(), groups, weight, bias, 1e-6), F.group_norm(x, groups, weight, bias, 1e-6),
                    f"GroupNorm of a {tuple(x.shape)} input with {groups} groups")

    return run_check("group_norm", trial, bugs=Bugs(2, nudges=(
        "after your reshape, which channels end up in group 0? Work it out on paper for C = 8 and G = 2.",
        "which variance does a normalisation layer use: the sample estimate, or the plain mean of squared "
        "deviations? (Small maps show the difference.)",
        "a reshape only regroups neighbours of the LAST dimensions it splits: which of the two new axes holds "
        "neighbouring channels?",
        "read the documentation of the variance you call: what does it divide by unless told otherwise?"),
        remaining=remaining),
        forbid=["fftd_course.blocks.group_norm", "torch.nn.functional.group_norm", "torch.group_norm"])
