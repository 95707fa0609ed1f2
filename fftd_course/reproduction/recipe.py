"""The settings of the reproduction (:class:`Recipe`): the full run that made ``docs/reproduction/`` and ``--quick``.

Every experiment of chapter 11 is a toy-scale re-run of one of the paper's tables on the toy faces (32 px,
classes cat / dog / wild, the paper's three AFHQ classes). A recipe fixes everything a result depends on;
its :meth:`Recipe.key` names the cache folder, so a changed setting never reuses a stale result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass

import torch

__all__ = ["Recipe", "FULL", "QUICK", "machine"]


@dataclass(frozen=True)
class Recipe:
    """One reproduction's settings; :data:`FULL` made the committed results, :data:`QUICK` is ``--quick``."""

    name: str = "full"
    train_images: int = 2048        # toy faces of seed 0: every model trains on them
    heldout_images: int = 300       # toy faces of seed 1: FID/KID reference, reconstructions, the judge's test
    samples_per_class: int = 32     # generated images per class for every FID/KID (3 classes)
    recon_images: int = 96          # held-out images reconstructed for Table 1 / 7
    # stage 1 (IVQ-VAE) of Tables 1 and 7, trained per seed: make demo's toy32 recipe (L1 + L_vq, cosine lr), shorter.
    # Tables 2, 3, 4, 8 and 9 vary only the FFTD: they share the committed toy generator's stage 1 (make weights).
    stage1_steps: int = 1200
    stage1_batch: int = 32
    stage1_lr: float = 2e-3
    disc_start_fraction: float | None = None  # the adversarial term from this fraction of the steps on (None: off)
    # stage 2 (FFTD)
    fftd_steps: int = 1200
    fftd_batch: int = 128
    fftd_lr: float = 1e-3
    ema_decay: float = 0.999
    warmup_steps: int = 50
    guidance: float = 3.0           # classifier-free guidance of every sample
    ddim_steps: int = 50            # the sampler of Tables 2, 7, 8, 9
    table3_steps: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
    # the pixel-space DDPM baseline (fftd_course.unet's "toy", T = 1000) at this width: 1000 sampling steps of the
    # toy's own width 16 for 120 images take 20 CPU minutes per seed, width 8 a quarter of that
    ddpm_width: int = 8
    ddpm_steps: int = 1000
    ddpm_batch: int = 64
    ddpm_lr: float = 2e-3
    judge_steps: int = 400
    kid_subsets: int = 100

    def key(self) -> str:
        """Eight hex digits of the settings (and whether LPIPS' VGG file was present): the cache folder's suffix."""
        from ..losses import lpips_weights_available

        from ..pipeline import TOY_CHECKPOINT

        shared = hashlib.sha256(TOY_CHECKPOINT.read_bytes()).hexdigest()[:16] if TOY_CHECKPOINT.is_file() else None
        text = json.dumps({**dataclasses.asdict(self), "lpips": lpips_weights_available(), "stage1": shared},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def settings(self) -> dict:
        from ..losses import lpips_weights_available

        return {**dataclasses.asdict(self), "lpips_vgg_present": lpips_weights_available(), "key": self.key()}


FULL = Recipe()
# --quick: one seed, a quarter of the data and steps, a fifth of the samples; every table in about 15 minutes.
QUICK = Recipe(name="quick", train_images=512, heldout_images=120, samples_per_class=16, recon_images=48,
               stage1_steps=200, fftd_steps=200, ddpm_steps=200, judge_steps=200, table3_steps=(10, 50, 500),
               kid_subsets=50)


def _cpu_model() -> str | None:
    """The CPU's model name where Linux says it: another CPU may round float sums differently."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine() -> dict:
    """Where a result was measured (seconds and milliseconds depend on it, and the last digits on the CPU)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
