"""Checks for chapter 09 (both stages together: Algorithms 2 and 3, eq. 30, classifier-free guidance).

The checks build tiny, freshly initialised models (no checkpoint), so they run in about a second.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import pipeline
from ..data import CLASSES
from ..diffusion import Diffusion
from ..fftd import FFTD
from ..fftd import get_config as fftd_config
from ..ivqvae import IVQVAE
from ..ivqvae import get_config as ivqvae_config
from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours

__all__ = ["check_guided_eps", "check_decode_sample", "check_off_code_distance"]


# ---- exercise 1: find the bugs in a colleague's classifier-free guidance -----------------------------------------

class _LabelledModel:
    """A stand-in for the FFTD: a smooth function of (z_t, t, y), different for every label, each row on its own
    (so one batched call and two calls give the same numbers). It records the labels it was called with."""

    def __init__(self, num_classes: int, channels: int, g: torch.Generator):
        self.num_classes, self.null_label = num_classes, num_classes
        self.table = torch.randn(num_classes + 1, channels, 1, 1, generator=g, dtype=torch.float64)
        self.gain = torch.rand(num_classes + 1, 1, 1, 1, generator=g, dtype=torch.float64) + 0.5
        self.seen: set[int] = set()

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise CheckFailure("the model was called with y = None; this FFTD always takes labels: which label "
                               "stands for \"no label\" (errata E12)?")
        if not isinstance(y, torch.Tensor) or y.shape != (len(z_t),) or y.dtype != torch.long:
            raise CheckFailure(f"the model was called with labels {y!r}; pass a LongTensor of shape ({len(z_t)},)")
        if int(y.min()) < 0 or int(y.max()) > self.null_label:
            raise CheckFailure(f"the model was called with label {int(y.min()) if int(y.min()) < 0 else int(y.max())}, "
                               f"outside 0 .. {self.null_label} (the classes, then the null label)")
        self.seen.update(int(v) for v in y.unique())
        return torch.tanh(self.gain[y] * z_t.double() + self.table[y] + 1e-3 * t.double().view(-1, 1, 1, 1)).to(z_t.dtype)


def _guidance_case(seed: int, num_classes: int = 3, batch: int = 12):
    g = torch.Generator().manual_seed(seed)
    model = _LabelledModel(num_classes, 4, g)
    z_t = torch.randn(batch, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.full((batch,), int(torch.randint(0, 500, (1,), generator=g)), dtype=torch.long)
    y = torch.arange(batch) % num_classes  # every class, class 0 included
    return model, z_t, t, y


def check_guided_eps(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """``fn(model, z_t, t, y, scale, null_label)``: the noise prediction of classifier-free guidance at scale
    ``scale`` (chapter 06's convention: 0 the unconditional model, 1 the conditional one); a find-the-bug exercise
    with two bugs, each with its own sub-test."""

    def guided(model, z_t, t, y, scale, null_label):  # the hidden reference
        eps_c, eps_u = model(z_t, t, y), model(z_t, t, torch.full_like(y, null_label))
        return eps_u + scale * (eps_c - eps_u)

    fn = yours(fn)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-6)

    def null_label_bug(seed: int) -> bool:
        """The unconditional prediction must come from the model called with the null label."""
        model, z_t, t, y = _guidance_case(seed)
        fn(model, z_t, t, y, 2.0, model.null_label)
        return model.null_label not in model.seen

    def scale_bug(seed: int) -> bool:
        """Scale 1 is the conditional model, whatever the unconditional prediction is."""
        model, z_t, t, y = _guidance_case(seed)
        return not close(fn(model, z_t, t, y, 1.0, model.null_label), model(z_t, t, y))

    seed = fresh_seed()

    def trial() -> None:
        for k, (num_classes, scale) in enumerate(((3, 2.0), (5, 0.0), (3, 1.0), (2, 4.5))):
            model, z_t, t, y = _guidance_case(seed + k, num_classes)
            keep = z_t.clone()
            got = fn(model, z_t, t, y, scale, model.null_label)
            if not torch.equal(z_t, keep):
                raise CheckFailure("your function changed z_t in place; the sampler still needs it")
            if model.null_label not in model.seen:
                raise CheckFailure(f"guidance at scale {scale} with {num_classes} classes: the model was called "
                                   f"only with the labels {sorted(model.seen)}: which of them means \"no label\"?")
            compare(got, guided(model, z_t, t, y, scale, model.null_label),
                    f"guidance at scale {scale} with {num_classes} classes (labels {y.tolist()[:6]} ...)",
                    atol=1e-6, rtol=1e-6)

    return run_check("guided_eps", trial, bugs=Bugs(2, nudges=(
        "which label did the unconditional call use, and which class has that number? (errata E12: what is the "
        "null label, and how does the sampler pass it?)",
        "at scale 1 the sampler should be the plain conditional model, at scale 0 the unconditional one: "
        "put 0 and 1 into the colleague's last line and compare (chapter 06's guidance section).",
        "guidance extrapolates from one prediction past the other: from which one does it start, and which "
        "difference does the scale multiply?"),
        remaining=lambda: null_label_bug(seed) + scale_bug(seed)),
        forbid=["fftd_course.diffusion.DDIMSampler._eps"])  # the samplers' own guidance


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
