"""Checks for chapter 08 (the FFTD model: patchify, the hourglass of eq. 16-17, the long skips)."""

from __future__ import annotations

from typing import Callable

import torch

from torch import nn

from .. import fftd
from ..fftd import FFTD, FFTDConfig
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_unpatchify(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """``fn(tokens, p, channels)`` undoes :func:`fftd_course.fftd.patchify`, like :func:`fftd_course.fftd.unpatchify`."""
    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for p, channels, side in [(1, 4, 4), (2, 4, 2), (4, 4, 1), (2, 3, 3), (4, 1, 2), (1, 2, 5)]:
            size = side * p
            x = torch.randn(2, channels, size, size, generator=g)
            got = fn(fftd.patchify(x, p), p, channels)
            compare(got, x, f"unpatchify(patchify(x, {p}), {p}, {channels}) for x of shape {tuple(x.shape)}", atol=0, rtol=0)
            tokens = torch.randn(3, side * side, p * p * channels, generator=g)
            compare(fn(tokens, p, channels), fftd.unpatchify(tokens, p, channels),
                    f"unpatchify of random tokens {tuple(tokens.shape)} with p={p}, channels={channels}", atol=0, rtol=0)

    return run_check("unpatchify", trial,
                     hint="tokens run row by row over the grid, and inside a token the numbers run in the order patchify "
                          "wrote them (row in the patch, column in the patch, channel last). Undo patchify's steps in "
                          "reverse order; a plain reshape is right only for p = 1.",
                     forbid=["fftd_course.fftd.unpatchify"])


# (input_size, patch_size, hidden_size, multires): the paper's 4x4 latent at every patch size, larger and odd grids
# where the number of halvings (E8) is neither 0 nor 2, and the multi-resolution switch off.
_RESAMPLING_CASES = [(4, 1, 32, True), (4, 2, 32, True), (4, 4, 32, True), (4, 1, 48, False), (8, 1, 16, True),
                     (6, 1, 24, True), (12, 1, 16, True), (6, 3, 8, True), (8, 2, 40, False), (16, 1, 8, True)]


def check_resampling_parameters(fn: Callable[[int, int, int, bool], int]) -> CheckResult:
    """``fn(input_size, patch_size, hidden_size, multires)`` is the number of parameters in the hourglass's eq. 16
    and eq. 17 convolutions, counted on the modules of a real :class:`fftd_course.fftd.FFTD`."""

    def measured(input_size: int, patch_size: int, hidden_size: int, multires: bool) -> int:  # the hidden reference
        config = FFTDConfig(input_size=input_size, patch_size=patch_size, hidden_size=hidden_size, num_heads=4,
                            multires=multires)
        with torch.device("meta"):  # no memory, only shapes
            model = FFTD(config)
        return fftd.count_parameters(model.downsample) + fftd.count_parameters(model.upsample)

    fn = yours(fn)

    def trial() -> None:
        for input_size, patch_size, hidden_size, multires in _RESAMPLING_CASES:
            got = fn(input_size, patch_size, hidden_size, multires)
            want = measured(input_size, patch_size, hidden_size, multires)
            if isinstance(got, torch.Tensor):
                got = got.item()
            if got != want:
                raise CheckFailure(f"input_size={input_size}, patch_size={patch_size}, hidden_size={hidden_size}, "
                                   f"multires={multires}: you predicted {got}, the model has {want}")

    return run_check("resampling_parameters", trial,
                     hint="three questions: how many times can this token grid halve (E8: a side must stay whole, and "
                          "never more than twice; none with multires off)? How many convolutions does each halving "
                          "bring, going down and coming back up? What does one D -> D convolution with a 3x3 kernel hold?",
                     # building the model and counting, or reading its halvings off the config
                     forbid=["fftd_course.fftd.count_parameters", "fftd_course.fftd.FFTD.__init__",
                             "fftd_course.fftd.FFTDConfig.levels", "fftd_course.fftd.FFTDConfig.block_grids"])


def _perturbed_model(config: FFTDConfig, seed: int) -> FFTD:
    """A model whose zero-initialised gates and layers are nudged, so every path of the forward pass matters."""
    torch.manual_seed(seed)
    model = FFTD(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def check_fftd_forward(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(model, x_t, t, y)`` computes what :meth:`fftd_course.fftd.FFTD.forward` does, from the model's parts.

    A find-the-bug exercise with two bugs, each with its own sub-test: the long skips (patch size 1, where the
    grid halves twice either way) and the halvings (patch sizes 2 and 4, with skips that pass the block's
    output through, so that where a fused result goes cannot show).
    """
    fn = yours(fn)

    class PassBlockOutput(nn.Module):  # a "fusion" that returns the block's own output
        def forward(self, skip: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return h

    def one_case(seed: int, patch: int, multires: bool, fusion: str, pass_skips: bool = False) -> None:
        config = FFTDConfig(patch_size=patch, multires=multires, fusion=fusion, hidden_size=32, num_heads=4)
        model = _perturbed_model(config, seed)
        if pass_skips:
            model.skip_inner, model.skip_outer = PassBlockOutput(), PassBlockOutput()
        g = torch.Generator().manual_seed(seed + 2)
        x_t = torch.randn(3, 4, 4, 4, generator=g)
        t = torch.randint(0, 500, (3,), generator=g)
        y = torch.randint(0, config.num_classes + 1, (3,), generator=g)
        with torch.no_grad():
            want = model(x_t, t, y)
            got = fn(model, x_t, t, y)
        compare(got, want, f"patch_size={patch}, multires={multires}, fusion={fusion!r} "
                           f"(block grids {config.block_grids})")

    def fails(*case) -> int:
        try:
            one_case(fresh_seed(), *case)
        except Exception:
            return 1
        return 0

    def remaining() -> int:
        return fails(1, True, "adaptive") + max(fails(2, True, "adaptive", True), fails(4, True, "adaptive", True))

    def trial() -> None:
        seed = fresh_seed()
        variants = [(p, multires, "adaptive") for p in (1, 2, 4) for multires in (True, False)] + [(1, True, "concat")]
        for i, (patch, multires, fusion) in enumerate(variants):
            one_case(seed + 10 * i, patch, multires, fusion)

    return run_check("fftd_forward", trial, bugs=Bugs(2, nudges=(
        "compare with the hourglass as drawn in section 4: which grid does each block see, for every patch size?",
        "a long skip fuses two token sets: which block's INPUT is the fused result (E14)? An output that is "
        "computed but never used is a bug too.",
        "the grid can halve only while its side stays whole, and never more than twice (E8): how many times can "
        "it halve for patch sizes 1, 2 and 4, and how many times does this code halve it?",
        "trace the shapes of h1 ... h5 for patch size 4, and the value each block receives, against the "
        "trace of section 4."), remaining=remaining),
        forbid=["fftd_course.fftd.FFTD.forward", "fftd_course.fftd.FFTD._down", "fftd_course.fftd.FFTD._up"])
