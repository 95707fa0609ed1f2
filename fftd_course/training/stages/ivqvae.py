"""Stage 1: the IVQ-VAE (Algorithm 1, :func:`~fftd_course.pipeline.ivqvae_update`); its result is ``ivqvae.pt``."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ... import data as data_mod
from ... import ivqvae as ivqvae_mod
from ...checkpoints import CheckpointError, atomic_save
from ...checkpoints import load as load_checkpoint
from ...losses import LPIPS, HybridLoss, NLayerDiscriminator, lpips_weights_available
from ...pipeline import _config_from_dict, _eval_mode, ivqvae_update, stage1_optimizers
from ..config import TrainConfig
from ..distributed import average_gradients, ddp
from ..registry import register
from .base import Stage, data_fingerprint, dataset_for, flip

__all__ = ["IVQVAEStage", "IVQVAE_FORMAT", "save_ivqvae", "load_ivqvae"]

IVQVAE_FORMAT = "fftd_course.IVQVAE/1"


def save_ivqvae(model: ivqvae_mod.IVQVAE, path: str | Path, meta: dict | None = None) -> Path:
    """Stage 1's result: its configuration and weights (``torch.load(weights_only=True)`` reads it), atomically."""
    return atomic_save({"format": IVQVAE_FORMAT, "config": dataclasses.asdict(model.config),
                        "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "meta": dict(meta or {})}, path)


def stage1_file(path: str | Path) -> Path:
    """The stage-1 model file ``path`` names: the file itself, or ``ivqvae.pt`` in a stage-1 run folder."""
    path = Path(path)
    return path / "ivqvae.pt" if path.is_dir() else path


def load_ivqvae(path: str | Path, device: torch.device | str = "cpu") -> tuple[ivqvae_mod.IVQVAE, dict]:
    """``(model, meta)`` from :func:`save_ivqvae`'s file, or from a stage-1 run folder (its ``ivqvae.pt``)."""
    path = stage1_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no stage-1 model at {path}: train it first (python -m fftd_course train-ivqvae ...), "
                                "or point stage1 at the stage-1 run folder")
    ckpt = load_checkpoint(path, IVQVAE_FORMAT, "stage-1 model",
                           remedy="point stage1 at a stage-1 run folder or the ivqvae.pt that train-ivqvae wrote")
    try:
        model = ivqvae_mod.IVQVAE(_config_from_dict(ivqvae_mod.IVQVAEConfig, ckpt["config"]))
        model.load_state_dict(ckpt["weights"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} does not fit this code ({type(e).__name__}: {e})") from None
    return model.to(device).eval(), ckpt.get("meta", {})


@register
class IVQVAEStage(Stage):
    """Stage 1: the autoencoder and its discriminator, Adam with taming's GAN betas, k-means codebook start."""

    name = "ivqvae"
    command = "train-ivqvae"
    help = "stage 1: the IVQ-VAE (Algorithm 1)"
    final_file = "ivqvae.pt"
    log_key = "l1"
    presets: dict[str, dict[str, Any]] = {
        # The toy faces at 32 px (toy-f8: the paper's 4x4x4 latent grid) with `make demo`'s recipe: L1 + L_vq (no
        # discriminator, no LPIPS: a few CPU minutes cannot use them), cosine lr, k-means on the first batch;
        # about 2 minutes on a CPU.
        "toy32": dict(model="toy-f8", data="toy", resolution=32, steps=1500, batch_size=32, lr=2e-3, beta1=0.5,
                      beta2=0.9, lr_schedule="cosine", warmup_steps=100, lpips="off", perceptual_weight=0.0,
                      disc_start=1_000_000_000, disc_layers=2, hflip=False, kmeans_batches=1, num_workers=0,
                      log_every=50, sample_every=500, ckpt_every=500, out="runs/toy32/ivqvae"),
        # Any folder of 64 px images (class sub-folders = labels), f = 16 -> a 4x4x4 latent; both stages on about
        # 4,000 images in about 30 minutes on a 2-core CPU (the README gives the measured times).
        "small64": dict(model="small-f16", data="", resolution=64, steps=800, batch_size=16, lr=3e-4, beta1=0.5,
                        beta2=0.9, lr_schedule="cosine", warmup_steps=50, lpips="vgg", disc_start=500, disc_layers=2,
                        num_workers=0, log_every=50, sample_every=400, ckpt_every=200, out="runs/small64/ivqvae"),
        # The paper's own settings (section 4.2, Algorithm 1): batch size 1, lr 1e-4, 4e6 steps, the discriminator
        # from step 250k (E11). Reproduces the recipe, not a sensible use of a GPU (E9).
        "paper": dict(model="paper-f64", data="", resolution=256, steps=4_000_000, batch_size=1, lr=1e-4, beta1=0.9,
                      beta2=0.999, disc_start=250_000, num_workers=4, log_every=1000, sample_every=100_000,
                      ckpt_every=50_000, out="runs/paper/ivqvae"),
        # CelebA-HQ / AFHQ 256 px (--data FOLDER): the paper's f = 64 autoencoder at a batch size a GPU wants (E9).
        **{name: dict(model="paper-f64", data="", resolution=256, steps=200_000, batch_size=32, lr=1e-4, beta1=0.5,
                      beta2=0.9, disc_start=50_000, num_workers=8, compile=True, log_every=100, sample_every=5000,
                      ckpt_every=5000, out=f"runs/{name}/ivqvae") for name in ("celebahq256", "afhq256")},
    }

    @classmethod
    def model_configs(cls) -> dict[str, Any]:
        return ivqvae_mod.CONFIGS

    @classmethod
    def validate(cls, config: TrainConfig) -> tuple[str, str] | None:
        f = ivqvae_mod.get_config(config.model).f
        if config.resolution % f:
            return "resolution", f"must be a multiple of the model's compression factor f = {f} ({config.model})"
        return None

    def __init__(self, config: TrainConfig, d, device: torch.device, progress: bool):
        super().__init__(config, d, device, progress)
        c = config
        torch.manual_seed(c.seed)
        self.dataset = dataset_for(c, progress)
        self.check_size(len(self.dataset), "images")
        self.class_names = tuple(getattr(self.dataset, "class_names", ()))
        self._model = ivqvae_mod.IVQVAE(ivqvae_mod.get_config(c.model, resolution=c.resolution)).to(device)
        self.loss = HybridLoss(NLayerDiscriminator(n_layers=c.disc_layers), self._perceptual(),
                               perceptual_weight=c.perceptual_weight if c.lpips != "off" else 0.0,
                               disc_start=c.disc_start, disc_weight=c.disc_weight, check_finite=False).to(device)
        opt_ae, opt_d = stage1_optimizers(self._model, self.loss, c.lr, (c.beta1, c.beta2), fused=device.type == "cuda")
        self.optimizers = {"ae": opt_ae, "disc": opt_d}
        if d.on:  # the discriminator is not wrapped in DDP (it also judges x_hat frozen): average by hand
            self.optimizers["disc"].register_step_pre_hook(lambda *_: average_gradients(self.loss.discriminator))
        self.data_order = self.sampler(len(self.dataset))
        self.fixed = torch.stack([self.dataset[i][0] for i in range(min(8, len(self.dataset)))])
        self.forward = self._model

    def _perceptual(self) -> LPIPS | None:
        c = self.config
        if c.perceptual_weight == 0 or c.lpips == "off":
            return None
        if c.lpips == "vgg" and not lpips_weights_available():
            LPIPS()  # raises LPIPSWeightsMissing, whose message says where the file goes and how to get it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LPIPS(random_trunk=c.lpips == "random")

    @property
    def model(self) -> ivqvae_mod.IVQVAE:
        return self._model

    def fingerprint(self) -> dict[str, Any]:
        return {"data": data_fingerprint(self.config)}

    def prepare(self, batches: Iterator[torch.Tensor]) -> None:
        """k-means on the encoder outputs of a few batches, before the first step (not inside a compiled forward)."""
        q = self._model.quantizer
        if not getattr(q, "kmeans_init", False) or bool(q.initialized):
            return
        with torch.no_grad(), _eval_mode(self._model):
            z = torch.cat([self._model.encode(next(batches)) for _ in range(self.config.kmeans_batches)])
        q.init_codebook(z)
        if self.d.on:
            torch.distributed.broadcast(q.codebook.data, src=0)

    def wrap(self) -> None:
        if self.d.on:
            self.forward = ddp(self._model, self.device, rank_local_buffers=True)
        if self.config.compile:
            self.forward = torch.compile(self.forward)
            if self.loss.perceptual is not None:
                self.loss.perceptual = torch.compile(self.loss.perceptual)

    def batches(self) -> Iterator[torch.Tensor]:
        """Micro-batches in the sampler's order, forever; ``self.position`` counts the items handed out."""
        c = self.config
        while True:
            loader = data_mod.make_loader(self.dataset, self.micro, self.data_order, num_workers=c.num_workers)
            for x, _ in loader:
                self.position["index"] += len(x)
                x = x.to(self.device, non_blocking=True)
                yield flip(x, self.flip_gen) if c.hflip else x
            self.next_epoch(self.data_order)

    def train_step(self, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        return ivqvae_update(self._model, self.loss, self.optimizers["ae"], self.optimizers["disc"], micro_batches,
                             step, forward=self.forward, amp_dtype=self.amp_dtype, no_sync=self.no_sync())

    def state(self) -> dict:
        return {"model": self._model.state_dict(), "discriminator": self.loss.discriminator.state_dict()}

    def load_state(self, state: dict) -> None:
        self._model.load_state_dict(state["model"])
        self.loss.discriminator.load_state_dict(state["discriminator"])

    @torch.no_grad()
    def images(self) -> dict[str, torch.Tensor]:
        with _eval_mode(self._model):
            x = self.fixed.to(self.device)
            x_hat = self._model(x)[0].float()
        return {"reconstructions": torch.cat([x, x_hat]).cpu()}

    def finish(self) -> Path:
        usage = self._model.quantizer.usage()
        c = self.config
        meta = {"data": c.data, "resolution": c.resolution, "class_names": list(self.class_names),
                "toy_images": c.toy_images, "data_seed": c.data_seed, "steps": self.step,
                "codes_used": usage.distinct, "num_codes": self._model.config.num_codes}
        return save_ivqvae(self._model, self.out / self.final_file, meta)

    def summary(self) -> dict[str, Any]:
        return {**self.notes, "skipped_images": len(getattr(self.dataset, "skipped", []) or [])}
