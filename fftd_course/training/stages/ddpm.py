"""The pixel-space DDPM baseline (paper section 4.3.4): a U-Net on the images themselves; result ``pixel_diffusion.pt``.

The third stage beside stage 1 and stage 2, and independent of both: it reads images (a folder, or the toy
faces) as stage 1 does, and trains :class:`~fftd_course.unet.UNet` with the epsilon loss, AdamW and an EMA of
its weights as stage 2 trains the FFTD (:func:`~fftd_course.pipeline.fftd_update` takes any noise predictor).
Its result is a :class:`~fftd_course.baseline.PixelDiffusion`, which ``python -m fftd_course sample`` and
``fid`` read like a ``latent_diffusion.pt``. Table 4's baseline rows: ``sample --sampler ddpm`` (1000 steps)
and ``--steps 500`` (DDIM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from ... import data as data_mod
from ... import unet as unet_mod
from ...baseline import PixelDiffusion
from ...diffusion import Diffusion, beta_schedule
from ...pipeline import EMA
from ..config import TrainConfig
from ..distributed import ddp
from ..registry import register
from .base import DenoiserStage, data_fingerprint, dataset_for, flip, preview_samples

__all__ = ["DDPMStage"]


@register
class DDPMStage(DenoiserStage):
    """The pixel-space DDPM baseline: the U-Net with AdamW and an EMA of its weights, on images in ``[-1, 1]``."""

    name = "ddpm"
    command = "train-ddpm"
    help = "the pixel-space DDPM baseline: a U-Net on the images (section 4.3.4)"
    final_file = "pixel_diffusion.pt"
    log_key = "loss"
    opt_key = "unet"
    presets: dict[str, dict[str, Any]] = {
        # The toy faces at 32 px with the CPU toy U-Net: DDPM's schedule (T = 1000, linear 1e-4 -> 0.02), EMA 0.999
        # (0.9999 needs ~10^5 steps to average over), cosine lr. lr 2e-3, not the paper's 2e-4: after 600 steps at
        # batch 64 (cosine, a narrower U-Net) the held-out epsilon loss was 0.051 at 2e-3, 0.085 at 1e-3 and 0.44 at 2e-4.
        "toy32": dict(model="toy", data="toy", resolution=32, steps=2000, batch_size=64, lr=2e-3, lr_schedule="cosine",
                      warmup_steps=100, ema_decay=0.999, T=1000, schedule="linear", hflip=False, num_workers=0,
                      log_every=100, sample_every=1000, ckpt_every=500, sample_steps=50, out="runs/toy32/ddpm"),
        # Section 4.3.4 as printed: lr 2e-4, batch 16, 4e5 steps, EMA 0.9999, T = 1000 linear (--data FOLDER).
        "paper": dict(model="paper", data="", resolution=256, steps=400_000, batch_size=16, lr=2e-4, ema_decay=0.9999,
                      T=1000, schedule="linear", num_workers=4, log_every=1000, sample_every=50_000,
                      ckpt_every=10_000, out="runs/paper/ddpm"),
        # CelebA-HQ / AFHQ 256 px (--data FOLDER) on a GPU: the paper's recipe, compiled.
        **{name: dict(model="paper", data="", resolution=256, steps=400_000, batch_size=16, lr=2e-4, ema_decay=0.9999,
                      T=1000, schedule="linear", num_workers=8, compile=True, log_every=100, sample_every=10_000,
                      ckpt_every=10_000, out=f"runs/{name}/ddpm") for name in ("celebahq256", "afhq256")},
    }

    @classmethod
    def model_configs(cls) -> dict[str, Any]:
        return unet_mod.CONFIGS

    @classmethod
    def validate(cls, config: TrainConfig) -> tuple[str, str] | None:
        factor = unet_mod.get_config(config.model).factor
        if config.resolution % factor:
            return "resolution", (f"must be a multiple of {factor}: the {config.model} U-Net halves the image "
                                   f"{factor.bit_length() - 1} times")
        try:  # attention levels and widths are checked for this resolution, by name
            unet_mod.get_config(config.model, resolution=config.resolution)
        except ValueError as e:
            return "resolution", str(e)
        return None

    def __init__(self, config: TrainConfig, d, device: torch.device, progress: bool):
        super().__init__(config, d, device, progress)
        c = config
        torch.manual_seed(c.seed)
        self.dataset = dataset_for(c, progress)
        self.check_size(len(self.dataset), "images")
        self.class_names = tuple(getattr(self.dataset, "class_names", ()))
        uc = unet_mod.get_config(c.model, resolution=c.resolution, num_classes=len(self.class_names))
        self._model = unet_mod.UNet(uc).to(device)
        self.ema = EMA(self._model, c.ema_decay)
        self.diffusion = Diffusion(beta_schedule(c.schedule, c.T))
        self.optimizers = {"unet": torch.optim.AdamW(self._model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                                     weight_decay=c.weight_decay, fused=device.type == "cuda")}
        self.data_order = self.sampler(len(self.dataset))
        self.forward = self._model

    @property
    def model(self) -> unet_mod.UNet:
        return self._model

    def fingerprint(self) -> dict[str, Any]:
        return {"data": data_fingerprint(self.config)}

    def wrap(self) -> None:
        if self.d.on:
            self.forward = ddp(self._model, self.device)
        if self.config.compile:
            self.forward = torch.compile(self.forward)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(images, labels)`` micro-batches in the sampler's order, forever (labels ``None`` without classes)."""
        c = self.config
        while True:
            loader = data_mod.make_loader(self.dataset, self.micro, self.data_order, num_workers=c.num_workers)
            for x, y in loader:
                self.position["index"] += len(x)
                x = x.to(self.device, non_blocking=True)
                x = flip(x, self.flip_gen) if c.hflip else x
                yield x, (y.to(self.device, non_blocking=True) if self.class_names else None)
            self.next_epoch(self.data_order)

    def generator(self) -> PixelDiffusion:
        return PixelDiffusion(self.ema.model, self.diffusion, self.class_names,
                              meta={"config": self.config.to_dict(), "steps": self.step})

    def images(self) -> dict[str, torch.Tensor]:
        return preview_samples(self.generator(), self.config, self.class_names)

    def finish(self) -> Path:
        return self.generator().save(self.out / self.final_file)

    def summary(self) -> dict[str, Any]:
        return {**self.notes, "skipped_images": len(getattr(self.dataset, "skipped", []) or [])}
