"""The pieces every table is made of: trained models, sample sets and their measures, each computed once.

:class:`Lab` trains and measures on the toy faces with one :class:`~.recipe.Recipe` and keeps every result in
a :class:`~.store.Store`, so Table 3 and Table 4 share one FFTD per seed, and a stopped run resumes. Models:

* stage 1 (:data:`STAGE1`): the IVQ-VAE at f = 4 / 8 / 16 (Table 1) and f = 8 with one of its three
  improvements switched off (Table 7), trained per seed. "Hybrid loss" at toy scale is what of it runs on a CPU
  in minutes: L1 + ``L_vq`` (LPIPS too where torchvision's VGG16 file is present; the adversarial term when the
  recipe's ``disc_start_fraction`` is set); without it, the plain VQ-VAE's squared error. ``"committed"`` is the
  committed toy generator's stage 1 (``pipeline.load_toy``), which the FFTD tables share, whatever the seed.
* stage 2 (:data:`FFTD_VARIANTS`): the toy FFTD with patch 1 / 2 / 4 (Table 2), fusion add / concat /
  adaptive (Table 9), with and without the multi-resolution hourglass (Table 8), on a stage 1's latents.
* the pixel-space DDPM baseline (:mod:`fftd_course.unet`, T = 1000; Tables 3 and 4).

Measures: FID (n stated) and KID (unbiased at small n, with its spread over subsets) with the real Inception
weights against held-out faces, the class judge's accuracy, and milliseconds per image on this machine.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch

from .. import data, diffusion, fftd, ivqvae, pipeline
from ..configs import count_parameters
from ..evaluation import judge as judge_mod
from ..evaluation import metrics
from ..losses import LPIPS, HybridLoss, NLayerDiscriminator, lpips_weights_available
from .recipe import Recipe
from .store import Store

__all__ = ["Lab", "STAGE1", "FFTD_VARIANTS", "CLASSES"]

CLASSES = ("cat", "dog", "wild")
# stage-1 variant -> (IVQ-VAE configuration, its overrides, hybrid loss?)
STAGE1: dict[str, tuple[str, dict, bool]] = {
    "f4": ("toy-f4", {}, True),
    "f8": ("toy-f8", {}, True),
    "f16": ("toy-f16", {}, True),
    "no-attention": ("toy-f8", {"attention": False}, True),
    "no-residual": ("toy-f8", {"residual": False}, True),
    "no-hybrid": ("toy-f8", {}, False),
}
# FFTD variant -> overrides of fftd.get_config("toy")
FFTD_VARIANTS: dict[str, dict] = {
    "default": {},
    "p2": {"patch_size": 2},
    "p4": {"patch_size": 4},
    "add": {"fusion": "add"},
    "concat": {"fusion": "concat"},
    "add-flat": {"fusion": "add", "multires": False},
    "adaptive-flat": {"multires": False},
}


def _seconds(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Lab:
    """Models, samples and measures of one recipe, cached in ``store`` (see the module docstring)."""

    def __init__(self, recipe: Recipe, store: Store, progress: bool = False, results: Store | None = None):
        self.recipe, self.store, self.progress = recipe, store, progress
        self.results = results if results is not None else store  # where (table, row, seed) results go

    @functools.cached_property
    def committed(self) -> ivqvae.IVQVAE:
        """The committed toy generator's stage 1 (trained by ``make weights``), shared by the FFTD tables."""
        return pipeline.load_toy().ivqvae.eval()

    # ---- data, judge, reference ---------------------------------------------------------------------------
    @functools.cached_property
    def train_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return data.make_toy_faces(self.recipe.train_images, 32, seed=0)

    @functools.cached_property
    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        return data.make_toy_faces(self.recipe.heldout_images, 32, seed=1)

    @functools.cached_property
    def judge(self) -> judge_mod.ToyJudge:
        def train() -> dict:
            x, y = self.train_set
            with torch.no_grad():  # the judge also sees a decoder's style (as make demo's judge does)
                decoded = torch.cat([self.committed(b)[0] for b in x.split(256)])
            j, _ = judge_mod.train_judge(x, y, steps=self.recipe.judge_steps, seed=0, extra_images=decoded,
                                         progress=False)
            return {"weights": _weights(j), "heldout_accuracy": torch.tensor(judge_mod.accuracy(j, *self.heldout))}

        stored = self.store.get("judge.pt", train)
        j = judge_mod.ToyJudge()
        j.load_state_dict(stored["weights"])
        return j.eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return metrics.inception_features(images, progress=self.progress)

    @functools.cached_property
    def reference(self) -> dict[str, torch.Tensor]:
        """Inception features of the held-out faces, and their labels: what every FID and KID compares with."""
        return self.store.get("reference.pt", lambda: {"features": self.features(self.heldout[0]),
                                                      "labels": self.heldout[1]})

    # ---- stage 1 ------------------------------------------------------------------------------------------
    def _loss(self, hybrid: bool) -> HybridLoss:
        r = self.recipe
        never = 10**9
        if not hybrid:
            return HybridLoss(NLayerDiscriminator(n_layers=2), perceptual_weight=0.0, disc_start=never,
                              reconstruction="l2")
        perceptual = LPIPS() if lpips_weights_available() else None
        start = never if r.disc_start_fraction is None else int(r.stage1_steps * r.disc_start_fraction)
        return HybridLoss(NLayerDiscriminator(n_layers=2), perceptual, perceptual_weight=1.0 if perceptual else 0.0,
                          disc_start=start)

    def stage1(self, variant: str, seed: int) -> tuple[ivqvae.IVQVAE, dict]:
        """The IVQ-VAE ``variant`` of :data:`STAGE1` trained with ``seed`` (or the committed one), and its record."""
        if variant == "committed":
            return self.committed, {"seconds": 0.0, "parameters": count_parameters(self.committed)}
        name, overrides, hybrid = STAGE1[variant]
        config = ivqvae.get_config(name, **overrides)

        def train() -> dict:
            r = self.recipe
            torch.manual_seed(seed)
            model, loss = ivqvae.IVQVAE(config), self._loss(hybrid)
            start = time.perf_counter()
            history = pipeline.train_ivqvae(model, loss, self.train_set[0], r.stage1_steps, r.stage1_batch,
                                            lr=r.stage1_lr, seed=seed, progress=self.progress,
                                            lr_schedule=pipeline.cosine_lr(r.stage1_steps, r.warmup_steps))
            info = {"seconds": _seconds(start), "parameters": count_parameters(model),
                    "final_l1": float(sum(history["l1"][-20:]) / 20)}
            return {"weights": _weights(model.eval()), "info": info}

        stored = self.store.get(f"models/stage1-{variant}-seed{seed}.pt", train)
        model = ivqvae.IVQVAE(config)
        model.load_state_dict(stored["weights"])
        return model.eval(), dict(stored["info"])

    def reconstruction(self, variant: str, seed: int) -> dict[str, Any]:
        """Table 1 / 7's reconstruction measures of a stage-1 model on held-out faces."""
        model, info = self.stage1(variant, seed)
        x = self.heldout[0][:self.recipe.recon_images]
        lpips = LPIPS() if lpips_weights_available() else None
        scores = metrics.evaluate_reconstructions(lambda b: model(b)[0], x, lpips=lpips, device="cpu")
        with torch.no_grad():
            x_hat, q = model(x)
        usage = metrics.codebook_usage(q.indices, model.config.num_codes)
        return {"l1": scores.l1, "lpips": scores.lpips, **self.distance(x_hat),
                "codes_used": usage.distinct, "codes": model.config.num_codes, "perplexity": usage.perplexity,
                "latent": f"{model.config.latent_size}x{model.config.latent_size}x{model.config.z_channels}",
                "parameters": info["parameters"], "train_seconds": info["seconds"]}

    # ---- stage 2 ------------------------------------------------------------------------------------------
    def latents(self, stage1: ivqvae.IVQVAE) -> tuple[torch.Tensor, float]:
        z = pipeline.encode_latents(stage1, self.train_set[0])
        scale = pipeline.latent_scale(z)
        return z * scale, scale

    def fftd(self, stage1_variant: str, variant: str, seed: int) -> tuple[pipeline.LatentDiffusion, dict]:
        """The toy FFTD ``variant`` of :data:`FFTD_VARIANTS` on ``stage1_variant``'s latents, trained with ``seed``."""
        stage1, _ = self.stage1(stage1_variant, seed)
        config = fftd.get_config("toy", input_size=stage1.config.latent_size, **FFTD_VARIANTS[variant])
        sched = diffusion.Diffusion()

        def train() -> dict:
            r = self.recipe
            z, scale = self.latents(stage1)
            torch.manual_seed(seed)
            model = fftd.FFTD(config)
            start = time.perf_counter()
            _, ema = pipeline.train_fftd(model, sched, z, self.train_set[1], r.fftd_steps, r.fftd_batch, lr=r.fftd_lr,
                                         ema_decay=r.ema_decay, seed=seed, progress=self.progress,
                                         lr_schedule=pipeline.cosine_lr(r.fftd_steps, r.warmup_steps))
            seconds = _seconds(start)
            info = {"seconds": seconds, "parameters": count_parameters(model),
                    "images_per_second": round(r.fftd_steps * r.fftd_batch / seconds, 1)}
            return {"weights": _weights(ema.model), "scale": torch.tensor(scale), "info": info}

        stored = self.store.get(f"models/fftd-{stage1_variant}-{variant}-seed{seed}.pt", train)
        model = fftd.FFTD(config)
        model.load_state_dict(stored["weights"])
        return (pipeline.LatentDiffusion(stage1, model, sched, float(stored["scale"]), CLASSES),
                dict(stored["info"]))

    # ---- the pixel-space baseline ---------------------------------------------------------------------
    def ddpm(self, seed: int):
        """The toy DDPM U-Net (T = 1000, linear betas 1e-4..0.02) at the recipe's width, trained with ``seed``, as a
        PixelDiffusion."""
        from ..baseline import PixelDiffusion
        from ..unet import UNet, get_config

        sched = diffusion.Diffusion(diffusion.beta_schedule("linear", 1000))
        width = self.recipe.ddpm_width
        config = get_config("toy", ch=width, num_groups=min(8, width // 2))

        def train() -> dict:
            r = self.recipe
            torch.manual_seed(seed)
            model = UNet(config)
            start = time.perf_counter()
            _, ema = pipeline.train_fftd(model, sched, self.train_set[0], self.train_set[1], r.ddpm_steps,
                                         r.ddpm_batch, lr=r.ddpm_lr, ema_decay=r.ema_decay, seed=seed,
                                         progress=self.progress,
                                         lr_schedule=pipeline.cosine_lr(r.ddpm_steps, r.warmup_steps))
            seconds = _seconds(start)
            info = {"seconds": seconds, "parameters": count_parameters(model),
                    "images_per_second": round(r.ddpm_steps * r.ddpm_batch / seconds, 1)}
            return {"weights": _weights(ema.model), "info": info}

        stored = self.store.get(f"models/ddpm-seed{seed}.pt", train)
        model = UNet(config)
        model.load_state_dict(stored["weights"])
        return PixelDiffusion(model, sched, CLASSES), dict(stored["info"])

    # ---- samples and their measures ---------------------------------------------------------------------
    def samples(self, key: str, generator, seed: int, num_steps: int, sampler: str = "ddim") -> dict[str, torch.Tensor]:
        """``samples_per_class`` images of each class from ``generator`` (cached as ``key``), their Inception
        features and the sampling time per image (stage 2 and decoding, on this machine)."""
        def draw() -> dict:
            labels = torch.arange(len(CLASSES)).repeat_interleave(self.recipe.samples_per_class)
            kwargs = {"sampler": "ddpm"} if sampler == "ddpm" else {}  # else DDIM (eta = 1: respaced ancestral)
            start = time.perf_counter()
            images = generator.sample(labels, num_steps=num_steps, guidance_scale=self.recipe.guidance,
                                      seed=1000 + seed, eta=1.0 if sampler == "ddpm-respaced" else 0.0, **kwargs)
            ms = 1000 * (time.perf_counter() - start) / len(labels)
            return {"images": images.half(), "labels": labels, "features": self.features(images),
                    "ms_per_image": torch.tensor(ms)}

        return self.store.get(f"samples/{key}.pt", draw)

    def distance(self, images: torch.Tensor, features: torch.Tensor | None = None, reference=None) -> dict[str, float]:
        """FID and KID of ``images`` against the held-out faces (or ``reference`` features)."""
        features = self.features(images) if features is None else features
        reference = self.reference["features"] if reference is None else reference
        fid = metrics.fid_from_features(features, reference)
        kid = metrics.kid_from_features(features, reference, subsets=self.recipe.kid_subsets)
        return {"fid": fid.value, "kid": kid.value, "kid_std": kid.std, "n": fid.n_a, "n_ref": fid.n_b}

    def generation(self, s: dict[str, torch.Tensor], per_class: bool = False) -> dict[str, Any]:
        """FID, KID, the judge's class accuracy and ms per image of a sample set (per class too if asked)."""
        images, labels = s["images"].float(), s["labels"]
        result = {**self.distance(images, s["features"]),
                  "accuracy": judge_mod.accuracy(self.judge, images, labels), "ms_per_image": float(s["ms_per_image"]),
                  # a fingerprint of the samples themselves, so a re-run can be compared without Inception
                  "pixel_mean": float(images.double().mean()), "pixel_abs_mean": float(images.double().abs().mean())}
        if per_class:
            ref, ref_labels = self.reference["features"], self.reference["labels"]
            for k, name in enumerate(CLASSES):
                mine = labels == k
                d = self.distance(images[mine], s["features"][mine], ref[ref_labels == k])
                result[name] = {"fid": d["fid"], "kid": d["kid"], "kid_std": d["kid_std"], "n": d["n"],
                                "n_ref": d["n_ref"]}
        return result


def finite(value: float) -> float | None:
    """JSON has no NaN: a non-finite number is stored as null."""
    return value if value is not None and math.isfinite(value) else None
