"""Stage 2: the FFTD on the frozen stage 1's latents (Algorithm 2); its result is ``latent_diffusion.pt``.

The data set is encoded once by the frozen stage 1 (and its flips with ``hflip``) and cached in the run
folder as ``latents.pt``. The data is stage 1's own (its folder, or the same toy faces) unless ``data``
names another folder. A resume refuses a stage 1 or a data folder that changed since the checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from ... import fftd as fftd_mod
from ...checkpoints import atomic_save
from ...checkpoints import load as load_checkpoint
from ...diffusion import Diffusion, beta_schedule
from ...pipeline import EMA, LatentDiffusion, encode_latents, latent_scale
from ..config import ConfigError, TrainConfig
from ..distributed import ddp
from ..registry import register
from .base import DenoiserStage, data_fingerprint, dataset_for, file_hash, preview_samples
from .ivqvae import load_ivqvae, stage1_file

__all__ = ["LatentDiffusionStage", "LATENTS_FORMAT"]

LATENTS_FORMAT = "fftd_course.latents/1"


@register
class LatentDiffusionStage(DenoiserStage):
    """Stage 2: the FFTD with AdamW and an EMA of its weights, on cached latents of the frozen stage 1."""

    name = "fftd"
    command = "train-fftd"
    help = "stage 2: the FFTD on the frozen stage 1's latents (Algorithm 2)"
    final_file = "latent_diffusion.pt"
    log_key = "loss"
    opt_key = "fftd"
    presets: dict[str, dict[str, Any]] = {
        # make demo's recipe on the toy32 stage 1's faces (data "": stage 1's).
        "toy32": dict(model="toy", data="", stage1="runs/toy32/ivqvae", out="runs/toy32/fftd", steps=3000,
                      batch_size=128, lr=1e-3, lr_schedule="cosine", warmup_steps=100, ema_decay=0.999, hflip=False,
                      num_workers=0, log_every=100, sample_every=1000, ckpt_every=1000),
        "small64": dict(model="small", data="", stage1="runs/small64/ivqvae", out="runs/small64/fftd", steps=2000,
                        batch_size=64, lr=1e-3, lr_schedule="cosine", warmup_steps=100, ema_decay=0.999, num_workers=0,
                        log_every=100, sample_every=1000, ckpt_every=500),
        # The paper's own settings: batch size 1, lr 1e-4, EMA 0.9999, 4e6 steps (E9).
        "paper": dict(model="paper", data="", stage1="runs/paper/ivqvae", out="runs/paper/fftd", steps=4_000_000,
                      batch_size=1, lr=1e-4, ema_decay=0.9999, log_every=1000, sample_every=100_000,
                      ckpt_every=50_000),
        # The recommended 256 px recipe on GPUs (E9), on the 256 px stage 1 of the same preset.
        **{name: dict(model="paper", data="", stage1=f"runs/{name}/ivqvae", out=f"runs/{name}/fftd", steps=400_000,
                      batch_size=256, lr=1e-4, warmup_steps=1000, ema_decay=0.9999, compile=True, log_every=100,
                      sample_every=10_000, ckpt_every=10_000) for name in ("celebahq256", "afhq256")},
    }

    @classmethod
    def model_configs(cls) -> dict[str, Any]:
        return fftd_mod.CONFIGS

    @classmethod
    def validate(cls, config: TrainConfig) -> tuple[str, str] | None:
        if not config.stage1:
            return "stage1", "stage 2 needs the stage-1 run: set stage1 to its folder (or its ivqvae.pt)"
        return None

    def __init__(self, config: TrainConfig, d, device: torch.device, progress: bool):
        super().__init__(config, d, device, progress)
        self.stage1_path = stage1_file(config.stage1)
        self.ivqvae, self.stage1_meta = load_ivqvae(self.stage1_path, device)
        self.config = c = config.replace(**self._data_settings(config))
        self.latents, self.labels, self.class_names, self.scale = self._latents()
        torch.manual_seed(c.seed)
        fc = fftd_mod.get_config(c.model, in_channels=self.ivqvae.config.z_channels,
                                 input_size=self.ivqvae.config.latent_size, num_classes=len(self.class_names))
        self._model = fftd_mod.FFTD(fc).to(device)
        self.ema = EMA(self._model, c.ema_decay)
        self.diffusion = Diffusion(beta_schedule(c.schedule, c.T))
        self.optimizers = {"fftd": torch.optim.AdamW(self._model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                                     weight_decay=c.weight_decay, fused=device.type == "cuda")}
        self.data_order = self.sampler(len(self.latents))
        self.forward = self._model

    def _data_settings(self, c: TrainConfig) -> dict[str, Any]:
        """Stage 1's resolution always; its data (folder or toy faces, with their count and seed) unless ``data``
        names a folder of its own."""
        meta = self.stage1_meta
        changes: dict[str, Any] = {"resolution": self.ivqvae.config.resolution}
        if not c.data:
            if not meta.get("data"):
                raise ConfigError(f"data='': {self.stage1_path} does not say what it was trained on; pass --data")
            changes["data"] = meta["data"]
        if changes.get("data", c.data) == "toy" and meta.get("data") == "toy":
            changes.update(toy_images=meta.get("toy_images", c.toy_images),
                           data_seed=meta.get("data_seed", c.data_seed))
        return changes

    @property
    def model(self) -> fftd_mod.FFTD:
        return self._model

    def fingerprint(self) -> dict[str, Any]:
        return {"stage1": self.stage1_hash, "data": self.data_key}

    def _latents(self):
        """Encode the data set once with the frozen stage 1 (and its flips with ``hflip``); cached in the run folder."""
        c = self.config
        self.stage1_hash = file_hash(self.stage1_path)
        self.data_key = data_fingerprint(c)
        key = {"stage1": self.stage1_hash, "data": self.data_key, "hflip": c.hflip}
        cache = self.out / "latents.pt"
        if self.d.main:
            cached = self._cached(cache, key)
            if cached is None:
                cached = self._encode(key)
                atomic_save(cached, cache)
        self.d.barrier()
        if not self.d.main:
            cached = load_checkpoint(cache, LATENTS_FORMAT, "latent cache")
        self.check_size(len(cached["latents"]), "latents")
        self.notes["skipped_images"] = len(cached.get("skipped", []))
        scale = float(cached["scale"])
        names = tuple(cached["class_names"])
        labels = cached["labels"].to(self.device) if names else None
        return (cached["latents"] * scale).to(self.device), labels, names, scale

    def _cached(self, cache: Path, key: dict) -> dict | None:
        """The cache if it holds these latents; a damaged or stale one is re-encoded (with a word if damaged)."""
        if not cache.is_file():
            return None
        try:
            cached = load_checkpoint(cache, LATENTS_FORMAT, "latent cache")
        except Exception as e:  # noqa: BLE001 - a cache is never worth stopping for: rebuild it
            warnings.warn(f"{cache} cannot be read ({e}); encoding the latents again", stacklevel=2)
            return None
        return cached if cached.get("key") == key else None

    def _encode(self, key: dict) -> dict:
        c = self.config
        dataset = dataset_for(c, self.progress)
        self.check_size(len(dataset) * (2 if c.hflip else 1), "images")
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=0 if c.data == "toy" else c.num_workers)
        zs, ys = [], []
        for x, y in tqdm(loader, desc="encoding latents (once)", disable=not self.progress):
            x = x.to(self.device)
            zs.append(encode_latents(self.ivqvae, x))
            if c.hflip:
                zs.append(encode_latents(self.ivqvae, x.flip(-1)))
            ys.extend([y, y] if c.hflip else [y])
        z, y = torch.cat(zs), torch.cat(ys)
        return {"format": LATENTS_FORMAT, "key": key, "latents": z, "labels": y,
                "class_names": list(getattr(dataset, "class_names", ())), "scale": latent_scale(z),
                "skipped": [str(p) for p, _ in getattr(dataset, "skipped", [])]}

    def wrap(self) -> None:
        if self.d.on:
            self.forward = ddp(self._model, self.device)
        if self.config.compile:
            self.forward = torch.compile(self.forward)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        while True:
            order = torch.tensor(list(iter(self.data_order)), dtype=torch.long)
            for start in range(0, len(order) - self.micro + 1, self.micro):
                idx = order[start:start + self.micro].to(self.device)
                self.position["index"] += self.micro
                yield self.latents[idx], (self.labels[idx] if self.labels is not None else None)
            self.next_epoch(self.data_order)

    def state(self) -> dict:
        return {**super().state(), "scale": self.scale}

    def generator(self) -> LatentDiffusion:
        return LatentDiffusion(self.ivqvae, self.ema.model, self.diffusion, self.scale, self.class_names,
                               meta={"config": self.config.to_dict(), "steps": self.step, "stage1_sha256": self.stage1_hash})

    def images(self) -> dict[str, torch.Tensor]:
        return preview_samples(self.generator(), self.config, self.class_names)

    def finish(self) -> Path:
        return self.generator().save(self.out / self.final_file)
