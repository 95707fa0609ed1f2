"""Checks for chapter 02 (self-attention, eq. 8-10): the pixels one output sees, shuffled pixels, and a multi-head
block (E17) with three bugs to find."""

from __future__ import annotations

import math
from itertools import product
from typing import Callable

import torch
from torch import nn

from .. import blocks
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_pixels_seen(fn: Callable[[nn.Module, torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """``fn(block, x, row, col)``: ``(H, W)`` bool, the input pixels that output pixel ``(row, col)`` depends on."""

    def seen(block: nn.Module, x: torch.Tensor, row: int, col: int) -> torch.Tensor:  # the hidden reference
        x = x.detach().clone().requires_grad_(True)
        block(x)[:, :, row, col].sum().backward()
        return x.grad.abs().sum(dim=(0, 1)) > 0

    class RowMixer(nn.Module):  # every pixel sees its whole row and nothing else: a swapped row/col shows
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x.mean(dim=-1, keepdim=True)

    fn = yours(fn)

    def trial() -> None:
        torch.manual_seed(fresh_seed())
        conv = lambda c, k, **kw: nn.Conv2d(c, c, k, padding=kw.pop("padding", k // 2), **kw)  # noqa: E731
        cases = [("a 3x3 convolution", conv(4, 3), (2, 4, 6, 9), 2, 5),
                 ("a 5x5 convolution", conv(3, 5), (1, 3, 8, 7), 0, 6),
                 ("a dilated 3x3 convolution", conv(3, 3, padding=2, dilation=2), (1, 3, 9, 9), 4, 4),
                 ("two 3x3 convolutions", nn.Sequential(conv(4, 3), conv(4, 3)), (1, 4, 7, 10), 3, 1),
                 ("a row mixer", RowMixer(), (2, 2, 5, 8), 1, 6),
                 ("an attention block", blocks.AttnBlock(8, num_groups=4), (1, 8, 5, 6), 4, 0)]
        for name, block, shape, row, col in cases:
            x = torch.randn(shape)
            got = fn(block, x.clone(), row, col)
            want = seen(block, x, row, col)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                raise CheckFailure(f"{name} on a {shape} input: expected an (H, W) = {tuple(want.shape)} tensor, got "
                                   f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
            if got.dtype != torch.bool:
                raise CheckFailure(f"{name}: return a bool map (True where the input pixel matters), got {got.dtype}")
            if not torch.equal(got, want):
                raise CheckFailure(f"{name} on a {shape} input, output pixel ({row}, {col}): you marked "
                                   f"{int(got.sum())} input pixels, the reference {int(want.sum())} "
                                   f"({int((got != want).sum())} pixels disagree)")

    return run_check("pixels_seen", trial,
                     hint="ask autograd: which input pixels receive a non-zero gradient from ONE output pixel (all "
                          "its channels, every sample), and nothing else? A pixel counts if any of its channels "
                          "does; row indexes the height, col the width.",
                     # the attention map says which pixels one query reads, for attention blocks only
                     forbid=["fftd_course.blocks.AttnBlock.attention_map", "fftd_course.blocks.attention_weights"])


def check_attention_fixed(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(block, x)`` equals ``block(x)`` for ``blocks.AttnBlock(C, num_heads=n)``: the multi-head reading of eq.
    8-10 (E17). A find-the-bug exercise with three bugs, each with a sub-test: the answer's output is matched
    against the eight versions with any of the three bugs left in (scale by sqrt(C), softmax over the queries,
    the heads' output reshaped in the wrong layout)."""

    def attention(block: nn.Module, x: torch.Tensor, full_scale: bool = False, query_softmax: bool = False,
                  token_layout: bool = False) -> torch.Tensor:  # the hidden reference, any bug switchable on
        b, c, height, width = x.shape
        n = block.num_heads
        hn = block.norm(x)
        q, k, v = (conv(hn).view(b, n, c // n, height * width) for conv in (block.q, block.k, block.v))
        scores = torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(c if full_scale else c // n)
        weights = scores.softmax(dim=2 if query_softmax else 3)
        if token_layout:
            out = torch.einsum("bhij,bhcj->bhic", weights, v)
        else:
            out = torch.einsum("bhij,bhcj->bhci", weights, v)
        return x + block.proj_out(out.reshape(b, c, height, width))

    def block_and_input(channels: int, heads: int, shape: tuple[int, int], batch: int = 2):
        block = blocks.AttnBlock(channels, num_heads=heads, num_groups=4)
        with torch.no_grad():  # sharper scores than the default init, so that the scaling matters
            block.q.weight.mul_(4.0), block.k.weight.mul_(4.0)
        return block, torch.randn(batch, channels, *shape)

    fn = yours(fn)

    def remaining() -> int:
        torch.manual_seed(fresh_seed())
        block, x = block_and_input(16, 4, (3, 5))
        with torch.no_grad():
            got = fn(block, x.clone())
            for bugs in sorted(product([False, True], repeat=3), key=sum):
                if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(
                        got, attention(block, x, *bugs), atol=1e-4, rtol=1e-3):
                    return sum(bugs)
        raise CheckFailure("the answer matches none of the versions with the given bugs")  # count unknown

    def trial() -> None:
        torch.manual_seed(fresh_seed())
        for channels, heads, shape in [(8, 2, (4, 4)), (12, 3, (3, 5)), (16, 4, (5, 3)), (8, 1, (2, 6))]:
            block, x = block_and_input(channels, heads, shape)
            with torch.no_grad():
                got = fn(block, x.clone())
                want = block(x)
            compare(got, want, f"{heads}-head attention block, C = {channels}, {shape[0]}x{shape[1]} map",
                    atol=1e-4, rtol=1e-3)

    return run_check(
        "attention_fixed", trial,
        bugs=Bugs(3, nudges=(
            "row i of the weights belongs to query pixel i: over which index must each row sum to 1 (eq. 9)? "
            "Sum the weights over each axis in turn: which sums are 1?",
            "eq. 9 divides by the square root of the width of the vectors whose dot product it takes: how many "
            "channels does one head's query have (E17)?",
            "before the last reshape, write down what each axis of out holds; reshape regroups neighbours only, so "
            "the channels of a head must sit next to each other and before the pixels."), remaining=remaining),
        forbid=["fftd_course.blocks.AttnBlock.forward", "fftd_course.blocks.AttnBlock.attention_map",
                "fftd_course.blocks.AttnBlock.qkv", "fftd_course.blocks.AttnBlock._heads",
                "fftd_course.blocks.attention_weights", "fftd_course.fftd.Attention.forward"])


def check_shuffle_pixels(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(x, perm)``: output pixel ``i`` (row-major over ``H, W``) is input pixel ``perm[i]``, for every sample and channel."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(2, 3, 4, 4), (1, 5, 3, 7), (3, 2, 1, 6)]:
            x = torch.randn(shape, generator=g)
            perm = torch.randperm(shape[2] * shape[3], generator=g)
            want = x.flatten(2)[:, :, perm].reshape(shape)
            got = fn(x.clone(), perm.clone())
            compare(got, want, f"shuffle_pixels of a {shape} input")
            if not torch.equal(fn(x, torch.arange(shape[2] * shape[3])), x):
                raise CheckFailure("the identity permutation must leave x unchanged")

    return run_check("shuffle_pixels", trial,
                     hint="does your output pixel i read from perm[i] (gather), or does input pixel i get written "
                          "to perm[i] (scatter)? Those are inverse permutations. And the pixels are the last TWO "
                          "dimensions together.",
                     # the package's own moves between pixels and tokens
                     forbid=["fftd_course.fusion.tokens_to_grid", "fftd_course.fusion.grid_to_tokens"])
