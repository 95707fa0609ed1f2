"""Checks for chapter 07 (AdaptiveFusion, eq. 18-25, errata E1 and E2)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .. import fusion
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours

# (D, L): widths and token counts of the three grids FFTD fuses on (4x4, 2x2 and the 1x1 bottom).
CASES = [(32, 16), (48, 4), (16, 1)]


def perturbed_fusion(dim: int, seed: int, scale: float = 0.3) -> fusion.AdaptiveFusion:
    """An AdaptiveFusion with every parameter moved away from its initial value, as training would move it.

    A freshly initialised fusion has both gates at 0.5 and ``s = 0`` (``fftd_course.fusion``); on it many
    wrong answers agree with the right one, so every check here uses a perturbed fusion.
    """
    g = torch.Generator().manual_seed(seed)
    f = fusion.AdaptiveFusion(dim)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return f


def _inputs(g: torch.Generator, b: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two token sets whose channels have different means and scales, so that max and mean pools differ."""
    x1 = torch.randn(b, n, d, generator=g) * (1 + torch.rand(d, generator=g)) + torch.randn(d, generator=g)
    x2 = torch.randn(b, n, d, generator=g) * (1 + torch.rand(d, generator=g)) - torch.randn(d, generator=g)
    return x1, x2


def check_cbam_channel_weights(fn: Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]) -> CheckResult:
    """``fn(x1, x2, mlp)``: the channel weights ``(B, 1, D)`` of E2's CBAM reading, with ``mlp: 2D -> D/16 -> D``."""

    def cbam(x1: torch.Tensor, x2: torch.Tensor, mlp: nn.Module) -> torch.Tensor:  # the hidden reference
        x = torch.cat([x1, x2], dim=-1)
        return torch.sigmoid(mlp(x.mean(dim=1)) + mlp(x.amax(dim=1))).unsqueeze(1)

    fn = yours(fn)

    def trial() -> None:
        seed = fresh_seed()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        for d, n in CASES:
            hidden = max(1, d // 16)
            mlp = nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(), nn.Linear(hidden, d))
            x1, x2 = _inputs(g, 3, n, d)
            got = fn(x1, x2, mlp)
            compare(got, cbam(x1, x2, mlp), f"channel weights for x1, x2 of shape {tuple(x1.shape)}")

    return run_check("cbam_channel_weights", trial,
                     hint="in CBAM the two pooled vectors (over the tokens) each go through the same MLP on their own, "
                          "and the two results meet only before the sigmoid; the weights must broadcast over the "
                          "tokens of x1.",
                     forbid=["fftd_course.fusion.AdaptiveFusion.channel_weights"])


def _as_linears(got: object, d: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    hidden = max(1, d // 4)
    shapes = [((hidden, 2 * d), (hidden,)), ((hidden, hidden), (hidden,)), ((1, hidden), (1,))]
    if not isinstance(got, Sequence) or len(got) != 3:
        raise CheckFailure("return a list of three (weight, bias) pairs, one per convolution")
    for i, (pair, (w_shape, b_shape)) in enumerate(zip(got, shapes), start=1):
        if not isinstance(pair, Sequence) or len(pair) != 2 or not all(isinstance(t, torch.Tensor) for t in pair):
            raise CheckFailure(f"pair {i}: expected (weight, bias) tensors")
        if tuple(pair[0].shape) != w_shape or tuple(pair[1].shape) != b_shape:
            raise CheckFailure(f"pair {i} for D = {d}: weight {tuple(pair[0].shape)} and bias {tuple(pair[1].shape)}, "
                               f"expected {w_shape} and {b_shape} (a linear map out x in)")
    return list(got)


def check_spatial_gate_as_linears(fn: Callable[[nn.Sequential], list]) -> CheckResult:
    """``fn(gate)`` returns three ``(W, b)`` with which the spatial gate on a 1x1 grid is a plain MLP (eq. 22)."""
    fn = yours(fn)

    def trial() -> None:
        seed = fresh_seed()
        g = torch.Generator().manual_seed(seed)
        for d in (16, 32, 64):
            f = perturbed_fusion(d, seed + d)
            linears = _as_linears(fn(f.spatial_gate), d)
            x1, x2 = _inputs(g, 5, 1, d)
            h = torch.cat([x1, x2], dim=-1)[:, 0]  # the one token: (B, 2D)
            for i, (w, b) in enumerate(linears):
                h = h @ w.T + b
                if i < 2:
                    h = torch.relu(h)
            with torch.no_grad():
                compare(torch.sigmoid(h).detach(), f.spatial_weights(x1, x2)[:, 0],
                        f"the MLP built from your weights against the spatial gate on a 1x1 grid (D = {d})")

    return run_check("spatial_gate_as_linears", trial,
                     hint="with padding 1, a 3x3 kernel on a 1x1 map sees the one value at its centre and zeros "
                          "everywhere else: ask which of the nine taps ever multiplies something that is not zero, "
                          "and keep the biases.",
                     forbid=["fftd_course.fusion.AdaptiveFusion.spatial_weights"])


def check_fuse_fixed(fn: Callable[[torch.Tensor, torch.Tensor, fusion.AdaptiveFusion], torch.Tensor]) -> CheckResult:
    """``fn(x1, x2, f)`` computes eq. 18-25 with ``f``'s weights, as ``f(x1, x2)`` does, for trained-looking ``f``.

    A find-the-bug exercise with three bugs, each with its own sub-test on a fusion that hides the other two:
    the tokens' grid (a 4x4 grid, both LayerNorms alike, a Linear that weighs x1 and x2 alike), the LayerNorms
    (one token, the Linear symmetric) and eq. 25's order (one token, both LayerNorms alike).
    """
    fn = yours(fn)

    def agrees(d: int, n: int, norms_alike: bool, proj_symmetric: bool) -> bool:
        seed = fresh_seed()
        f = perturbed_fusion(d, seed)
        with torch.no_grad():
            if norms_alike:
                f.norm2.load_state_dict(f.norm1.state_dict())
            if proj_symmetric:
                f.proj.weight[:, d:] = f.proj.weight[:, :d]
        x1, x2 = _inputs(torch.Generator().manual_seed(seed), 3, n, d)
        try:
            with torch.no_grad():
                got, want = fn(x1, x2, f), f(x1, x2)
            return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
        except Exception:
            return False

    def remaining() -> int:
        return sum(not agrees(*case) for case in ((32, 16, True, True), (32, 1, False, True), (32, 1, True, False)))

    def trial() -> None:
        seed = fresh_seed()
        g = torch.Generator().manual_seed(seed)
        for d, n in CASES:
            f = perturbed_fusion(d, seed + n)
            x1, x2 = _inputs(g, 3, n, d)
            with torch.no_grad():
                got = fn(x1, x2, f)
                compare(got, f(x1, x2), f"your fusion against AdaptiveFusion on {n} tokens of width {d} "
                                        f"(gates away from 0.5, s != 0)")

    return run_check("fuse_fixed", trial, bugs=Bugs(3, nudges=(
        "every bug is invisible while both gates are 0.5 and s = 0: move the weights (as section 3 does) and "
        "compare each intermediate result with eq. 18-25, one line at a time.",
        "eq. 21 puts each token on a grid cell: print which token lands on cell (0, 1) for a 2x2 grid. Is it "
        "token 1?",
        "eq. 23 and eq. 24 each normalise one input: which LayerNorm belongs to which?",
        "eq. 25 concatenates two inputs: in which order, and does the order matter to a Linear layer once its "
        "weights are trained?",
        "one of the bugs cannot show on a 1x1 grid: which one, and why? Test on the 4x4 grid too."),
        remaining=remaining),
        forbid=["fftd_course.fusion.AdaptiveFusion.forward", "fftd_course.fusion.AdaptiveFusion.channel_weights",
                "fftd_course.fusion.AdaptiveFusion.spatial_weights"])
