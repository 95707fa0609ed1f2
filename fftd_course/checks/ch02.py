"""Checks for chapter 02 (self-attention, eq. 8-10): heads of the multi-head reading (E17), shuffled pixels."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_split_heads(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """``fn(x, num_heads)``: ``(B, N, C) -> (B, heads, N, C / heads)``, head ``i`` holding channels ``i*C/heads ...``."""

    def split(x: torch.Tensor, num_heads: int) -> torch.Tensor:  # the hidden reference
        return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(1, 2)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape, heads in [((2, 5, 8), 2), ((1, 16, 12), 3), ((3, 4, 32), 8), ((2, 3, 6), 1)]:
            # channel c of token t holds 100 t + c, so that a wrong split shows which value went where
            x = torch.randn(shape, generator=g) * 0.01 + (100 * torch.arange(shape[1]).view(1, -1, 1)
                                                          + torch.arange(shape[2]).view(1, 1, -1))
            compare(fn(x.clone(), heads), split(x, heads), f"split_heads of a {shape} input into {heads} heads")

    return run_check("split_heads", trial,
                     hint="the input's values are 100 * token + channel: look at which channels landed in head 0. "
                          "A reshape only regroups the LAST dimension's neighbours; the head axis must then move "
                          "in front of the tokens.",
                     forbid=["fftd_course.blocks.AttnBlock._heads"])


def check_multi_head_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """``fn(q, k, v, num_heads)`` on ``(B, N, C)`` tokens equals the multi-head reading of eq. 9-10 (E17)."""

    def multi_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:  # hidden
        q, k, v = (t.unflatten(-1, (num_heads, t.shape[-1] // num_heads)).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for b, n, m, c, heads in [(2, 6, 6, 8, 2), (1, 16, 9, 32, 4), (3, 5, 7, 12, 3), (2, 4, 4, 16, 1)]:
            q = torch.randn(b, n, c, generator=g) * 2
            k, v = torch.randn(b, m, c, generator=g) * 2, torch.randn(b, m, c, generator=g)
            got = fn(q.clone(), k.clone(), v.clone(), heads)
            compare(got, multi_head(q, k, v, heads), f"{heads}-head attention of {n} queries over {m} keys, C = {c}")

    return run_check("multi_head_attention", trial,
                     hint="three places to look: which width scales each head's scores (eq. 9 with the head's own "
                          "channels), whether the softmax runs over the keys, and whether the heads come back "
                          "side by side in the order split_heads took them apart.",
                     forbid=["fftd_course.blocks.AttnBlock.forward", "fftd_course.fftd.Attention.forward"])


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
