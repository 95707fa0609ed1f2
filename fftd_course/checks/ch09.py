"""Checks for chapter 09 (both stages together: Algorithms 2 and 3, eq. 30, classifier-free guidance).

The checks build tiny, freshly initialised models (no checkpoint), so they run in about a second.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .. import pipeline
from ..data import CLASSES
from ..diffusion import Diffusion
from ..fftd import FFTD
from ..fftd import get_config as fftd_config
from ..ivqvae import IVQVAE
from ..ivqvae import get_config as ivqvae_config
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours

__all__ = ["check_guided_eps_on_channels", "check_decode_sample", "check_off_code_distance"]


# ---- exercise 1: classifier-free guidance on some channels only ----------------------------------------------

def check_guided_eps_on_channels(fn: Callable[[torch.Tensor, torch.Tensor, float, Sequence[int]], torch.Tensor]) -> CheckResult:
    """``fn(eps_c, eps_u, scale, channels)`` guides only ``channels`` (dim 1) and leaves the others conditional."""

    def guided(eps_c: torch.Tensor, eps_u: torch.Tensor, scale: float, channels: Sequence[int]) -> torch.Tensor:
        # The hidden reference: guidance with factor `scale` on the latent `channels` listed; every other channel
        # keeps the conditional prediction eps_c (what the sampler uses at guidance scale 1).
        out = eps_c.clone()
        idx = list(channels)
        out[:, idx] = (eps_u + scale * (eps_c - eps_u))[:, idx]
        return out

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        cases = [((3, 4, 4, 4), 2.0, [0, 2]), ((2, 4, 4, 4), 4.0, [3]), ((5, 4, 4, 4), 0.0, [1, 2, 3]),
                 ((2, 4, 4, 4), 2.5, [0, 1, 2, 3]), ((2, 4, 4, 4), 3.0, []), ((4, 6, 2, 2), 1.5, [5, 0])]
        for shape, scale, channels in cases:
            eps_c, eps_u = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            keep_c, keep_u = eps_c.clone(), eps_u.clone()
            got = fn(eps_c, eps_u, scale, channels)
            if not (torch.equal(eps_c, keep_c) and torch.equal(eps_u, keep_u)):
                raise CheckFailure("your function changed eps_c or eps_u in place; the sampler still needs them: "
                                   "work on a copy")
            compare(got, guided(keep_c, keep_u, scale, channels),
                    f"guidance {scale} on channels {channels} of a {shape} batch")

    return run_check("guided_eps_on_channels", trial,
                     hint="on a listed channel the result moves from the unconditional prediction towards the "
                          "conditional one and beyond it, by the guidance scale (chapter 06's guidance section); "
                          "scale 0 gives the unconditional model there. On every other channel ask: what does "
                          "the sampler use when there is no guidance at all (scale 1)?",
                     # the samplers' own guidance (on every channel)
                     forbid=["fftd_course.diffusion.DDIMSampler._eps"])


# ---- exercise 2: find the bug in decoding a sample (eq. 30, errata E16) ---------------------------------------

def _tiny_stage1(seed: int, l2_normalize: bool) -> IVQVAE:
    torch.manual_seed(seed)
    model = IVQVAE(ivqvae_config("toy-f8", ch=8, num_codes=32, l2_normalize=l2_normalize)).eval()
    with torch.no_grad():  # a spread-out codebook, so that which code is nearest depends on the latent's scale
        model.quantizer.codebook.copy_(torch.randn(model.quantizer.codebook.shape) * 0.7)
    return model


def check_decode_sample(fn: Callable[[IVQVAE, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``fn(ivqvae, z, scale)`` turns sampled, scaled latents into images as eq. 30 asks
    (like :func:`fftd_course.pipeline.decode_latents` with ``requantize=True``), for any stage 1 (a find-the-bug
    exercise with one bug)."""
    fn = yours(fn)

    def trial() -> None:
        seed = fresh_seed()
        g = torch.Generator().manual_seed(seed)
        for l2 in (True, False):  # the toy stage 1 uses l2-normalised codes; the paper's VQ need not
            model = _tiny_stage1(seed, l2)
            for scale in (2.3, 0.6):
                z = torch.randn(3, 4, 4, 4, generator=g)
                with torch.no_grad():
                    got = fn(model, z, scale)
                want = pipeline.decode_latents(model, z, scale)
                kind = "l2-normalised" if l2 else "plain (not normalised)"
                compare(got, want, f"images from 3 latents, scale {scale}, a stage 1 with {kind} codes", atol=1e-4)

    return run_check("decode_sample", trial, bugs=Bugs(1, nudges=(
        "in which space do the codebook's vectors live: the FFTD's scaled one, or stage 1's own?",
        "every step that touches the codebook or the decoder must happen in stage 1's space (errata E16, "
        "eq. 30): which step of the given code touches the codebook first, and in which space is its input?",
        "compare the norm of the latent you snap with the norm of a code, for a stage 1 whose codes are not "
        "l2-normalised.")),
        forbid=["fftd_course.pipeline.decode_latents"])


# ---- exercise 3: how far do sampled latents land from the codebook? ---------------------------------------------

def _tiny_generator(seed: int) -> pipeline.LatentDiffusion:
    torch.manual_seed(seed)
    stage1 = IVQVAE(ivqvae_config("toy-f8", ch=8, num_codes=32))
    fftd = FFTD(fftd_config("toy", hidden_size=32, num_heads=2))
    with torch.no_grad():  # a freshly initialised FFTD predicts zero noise (adaLN-Zero): give it an output
        for p in fftd.final_layer.parameters():
            p.normal_(0, 0.2)
    return pipeline.LatentDiffusion(stage1, fftd, Diffusion(), scale=2.0 + torch.rand(()).item(), class_names=CLASSES)


def check_off_code_distance(fn: Callable[[pipeline.LatentDiffusion, int, torch.Tensor, int], float]) -> CheckResult:
    """``fn(generator, num_steps, labels, seed)``: the mean Euclidean distance (over the latent channels) between
    each sampled latent vector, in stage 1's own (unscaled) space, and its nearest code; one vector per latent
    position of every sample."""

    def distance(generator: pipeline.LatentDiffusion, num_steps: int, labels: torch.Tensor, seed: int = 0) -> float:
        result = generator.generate(labels, num_steps=num_steps, seed=seed)  # the hidden reference
        z = result.latents / generator.scale
        codes = generator.ivqvae.quantizer.lookup(result.indices)
        return float((z - codes).norm(dim=1).mean())

    fn = yours(fn)

    def trial() -> None:
        seed = fresh_seed()
        generator = _tiny_generator(seed)
        labels = torch.tensor([0, 1, 2, 1])
        for steps in (2, 7):
            got = fn(generator, steps, labels, seed % 1000)
            want = distance(generator, steps, labels, seed % 1000)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = float(got)
            if not isinstance(got, float):
                raise CheckFailure(f"return one Python float (the mean distance), got {type(got).__name__}")
            if abs(got - want) > 1e-4 * max(1.0, abs(want)):
                raise CheckFailure(f"with {steps} DDIM steps your distance is {got:.5f}, the reference {want:.5f}")

    return run_check("off_code_distance", trial,
                     hint="the codes live in stage 1's space, the sampler's output in the FFTD's scaled space "
                          "(errata E16); measure one length per latent position (over the channels, not squared), "
                          "then average over positions and samples.",
                     # no package function measures this; it needs no round trip through images
                     forbid=["fftd_course.ivqvae.IVQVAE.forward"])
