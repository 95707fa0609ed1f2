"""The pixel-space DDPM baseline as a generator (paper section 4.3.4, Tables 3 and 4), and one loader for both kinds.

:class:`PixelDiffusion` holds a :class:`~fftd_course.unet.UNet` (its EMA weights), the schedule and the class
names, with the user API of :class:`~fftd_course.pipeline.LatentDiffusion` (both are
:class:`~fftd_course.pipeline.GenerativeModel` s: the same labels, argument checks and sampler run):
``pd.sample(["cat", "dog"])``, ``pd.sample(n=8)``, ``pd.generate(..., sampler="ddpm")`` (DDPM's ancestral
sampler over all ``T = 1000`` steps: Table 4's "baseline 1000" row; ``sampler="ddim", num_steps=500`` its
"baseline 500" row, errata E10), ``save`` / ``load``.

:func:`load_generator` reads either checkpoint, ``latent_diffusion.pt`` (``train-fftd``) or
``pixel_diffusion.pt`` (``train-ddpm``), by the ``"format"`` tag in the file; ``python -m fftd_course sample``
and ``fid`` use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .checkpoints import CheckpointError, atomic_save
from .checkpoints import load as load_checkpoint
from .diffusion import Diffusion, beta_schedule
from .pipeline import CHECKPOINT_FORMAT as LATENT_FORMAT
from .pipeline import GenerativeModel, LatentDiffusion, SampleResult, _config_dict, _config_from_dict
from .unet import UNet, UNetConfig

__all__ = ["PIXEL_FORMAT", "PixelDiffusion", "load_generator"]

PIXEL_FORMAT = "fftd_course.PixelDiffusion/1"
_REMEDY = ("use a pixel_diffusion.pt written by train-ddpm or a latent_diffusion.pt written by train-fftd (or remake "
           "the toy checkpoint with `make weights`)")


class PixelDiffusion(GenerativeModel):
    """The pixel-space DDPM baseline: a frozen U-Net (its EMA weights), the schedule and the class names.

    ``PixelDiffusion(unet, diffusion, class_names, meta)``; ``diffusion`` defaults to DDPM's (and the paper's,
    section 4.3.4) linear schedule from 1e-4 to 0.02 over ``T = 1000`` steps. ``class_names`` has one name per
    label of the U-Net (empty for an unconditional model). Images are sampled directly, in ``[-1, 1]``.
    """

    def __init__(self, unet: UNet, diffusion: Diffusion | None = None, class_names: Sequence[str] = (),
                 meta: dict | None = None):
        super().__init__()
        c = getattr(unet, "config", None)
        if not isinstance(c, UNetConfig):
            raise ValueError(f"PixelDiffusion needs a fftd_course.unet.UNet, got {type(unet).__name__}")
        if len(class_names) != c.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the U-Net has {c.num_classes} classes")
        self.unet = unet.eval().requires_grad_(False)
        self.diffusion = diffusion if diffusion is not None else Diffusion(beta_schedule("linear", 1000))
        self.class_names = tuple(class_names)
        self.meta = dict(meta or {})

    def eps_model(self) -> nn.Module:
        return self.unet

    @property
    def resolution(self) -> int:
        return self.unet.config.resolution

    @torch.no_grad()
    def generate(self, classes: Sequence[str | int] | torch.Tensor | None = None, n: int | None = None, *,
                 num_steps: int | None = None, guidance_scale: float = 3.0, eta: float = 0.0, seed: int = 0,
                 keep_trajectory: bool = False, progress: bool = False, x_T: torch.Tensor | None = None,
                 sampler: str = "ddim", clip_x0: bool = True, fast: bool = False) -> SampleResult:
        """Sample images (Algorithm 3 in pixel space); see :class:`~fftd_course.pipeline.SampleResult`.

        The arguments are :meth:`LatentDiffusion.generate`'s: ``classes`` (names or indices, classifier-free
        guidance ``guidance_scale``) or ``n`` unconditional images; ``num_steps`` DDIM steps (default 50) with
        ``eta``; ``sampler="ddpm"``: DDPM's ancestral sampler over all ``T`` steps (``num_steps`` left out or
        ``T``, ``eta`` 0). ``clip_x0`` (default on) clamps the sampler's clean estimate to ``[-1, 1]`` at every
        step, as DDPM's own sampler does for images (``clip_denoised``): without it a small, briefly trained U-Net
        drifts to saturated colours (its epsilon at high noise is a little off, and the error grows step by step).
        ``images`` are the samples clamped to ``[-1, 1]``, ``latents`` the sampler's raw output, ``indices`` an
        empty tensor (no codebook). ``fast``: as in :meth:`LatentDiffusion.generate` (on CUDA, bf16 and CUDA
        graphs for deterministic DDIM).
        """
        c = self.unet.config
        y, x_T, generator = self._request(classes, n, num_steps, guidance_scale, eta, sampler,
                                          (c.in_channels, c.resolution, c.resolution), seed, x_T)
        x0, trajectory = self._denoise(x_T, y, classes is not None, generator, sampler=sampler, num_steps=num_steps,
                                       guidance_scale=guidance_scale, eta=eta, keep_trajectory=keep_trajectory,
                                       progress=progress, clip_x0=clip_x0, fast=fast)
        x0 = x0.contiguous().cpu()
        return SampleResult(x0.clamp(-1, 1), x0, torch.empty(0, dtype=torch.long), y, trajectory)

    # ---- checkpoints ----

    def checkpoint(self, dtype: torch.dtype = torch.float32) -> dict:
        """Everything :meth:`load` needs, as tensors, numbers, strings, lists and dicts only."""
        weights = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
                   for k, v in self.unet.state_dict().items()}
        return {"format": PIXEL_FORMAT, "unet_config": _config_dict(self.unet.config), "unet": weights,
                "betas": self.diffusion.betas.clone(), "class_names": list(self.class_names), "meta": self.meta}

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the checkpoint to ``path`` atomically (``checkpoints.atomic_save``; parent folders are created)."""
        return atomic_save(self.checkpoint(dtype), path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "PixelDiffusion":
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``) onto ``device``.

        A missing file raises ``FileNotFoundError``; a damaged or foreign one :class:`CheckpointError`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no PixelDiffusion checkpoint at {path}; train one with `python -m fftd_course "
                                    "train-ddpm` (it writes pixel_diffusion.pt) or write one with PixelDiffusion.save")
        ckpt = load_checkpoint(path, PIXEL_FORMAT, "PixelDiffusion checkpoint",
                               remedy="use a pixel_diffusion.pt written by train-ddpm")
        return cls.from_checkpoint(ckpt, path).to(device)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str | Path = "the checkpoint") -> "PixelDiffusion":
        """The generator from :meth:`checkpoint`'s dict (already read); :class:`CheckpointError` if it does not fit."""
        try:
            unet = UNet(_config_from_dict(UNetConfig, ckpt["unet_config"]))
            unet.load_state_dict(ckpt["unet"])
            return cls(unet, Diffusion(ckpt["betas"]), ckpt["class_names"], ckpt.get("meta"))
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit this code ({type(e).__name__}: {e}); retrain it with "
                                  "train-ddpm (or use the course version that wrote it)") from None


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> LatentDiffusion | PixelDiffusion:
    """The generator in ``path``: a :class:`LatentDiffusion` or a :class:`PixelDiffusion`, by the file's ``"format"``.

    One read of the file (``torch.load(weights_only=True)``); a missing file is ``FileNotFoundError``, any
    other file (damaged, a training checkpoint, a stage-1 model) a :class:`CheckpointError` that says what to give.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no generator checkpoint at {path}" + (": it is a folder" if path.is_dir() else "")
                                + f"; {_REMEDY}")
    ckpt = load_checkpoint(path, (LATENT_FORMAT, PIXEL_FORMAT), "generator checkpoint", remedy=_REMEDY)
    kind = LatentDiffusion if ckpt["format"] == LATENT_FORMAT else PixelDiffusion
    return kind.from_checkpoint(ckpt, path).to(device)
