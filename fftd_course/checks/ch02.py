"""Checks for chapter 02 (self-attention, eq. 8-10)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..blocks import AttnBlock, attention_weights
from .ch01 import _compare_module
from .core import CheckFailure, CheckResult, compare, fresh_seed, run_check


def check_attention_weights(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(q, k)`` returns ``Softmax(Q K^T / sqrt(C))`` (eq. 9) for ``(..., N, C)`` inputs."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape_q, shape_k in [((5, 4), (5, 4)), ((2, 16, 8), (2, 16, 8)), ((3, 1, 6, 32), (3, 1, 9, 32))]:
            q, k = torch.randn(shape_q, generator=g) * 2, torch.randn(shape_k, generator=g) * 2
            w = fn(q, k)
            compare(w, attention_weights(q, k), f"attention weights for q {shape_q}, k {shape_k}")
            if not torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5):
                raise CheckFailure("each row of the weights must sum to 1 (softmax over the keys, the last dim)")

    return run_check("attention_weights", trial,
                     hint="scores = q @ k.transpose(-2, -1) / sqrt(C), then softmax over the last dimension.")


def check_attn_block(cls: type[nn.Module]) -> CheckResult:
    """``cls(channels, num_groups=...)`` behaves like single-head :class:`fftd_course.blocks.AttnBlock`."""

    def trial() -> None:
        torch.manual_seed(fresh_seed())
        for c, size in [(8, (4, 4)), (16, (3, 5)), (32, (8, 8))]:
            x = torch.randn(2, c, *size)
            _compare_module(cls(c, num_groups=4), AttnBlock(c, num_groups=4), x, f"AttnBlock({c}) on a {tuple(x.shape)} input")

    return run_check("AttnBlock.forward", trial,
                     hint="normalise, 1x1 q/k/v, flatten pixels to (B, HW, C), weights @ v, back to (B, C, H, W), "
                          "proj_out, and add the input.")
