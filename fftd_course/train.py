"""The full-scale trainer: one training loop for both stages, from a CPU smoke run to several GPUs.

Stage 1 (``stage="ivqvae"``) is Algorithm 1 (:func:`~fftd_course.pipeline.ivqvae_update`), stage 2
(``stage="fftd"``) is Algorithm 2 (:func:`~fftd_course.pipeline.fftd_update`) on latents that the frozen
stage 1 encodes once and caches. Everything a run needs is one :class:`TrainConfig` (a named preset,
optionally a YAML/TOML file, then command-line overrides). What the loop adds to the pipeline's steps:

* speed: bf16 autocast on CUDA, optional ``torch.compile``, fused Adam/AdamW, gradient accumulation, no
  host-device synchronisation between log lines (losses stay on the device until they are logged);
* bookkeeping: a tqdm bar with images per second, TensorBoard scalars and image grids, a ``log.jsonl``;
* safety: a NaN/inf guard at every log line (as chapter 04's ``check_finite``, once per log interval),
  checkpoints every ``ckpt_every`` steps and on SIGINT/SIGTERM, written atomically (temporary file,
  fsync, rename) with the last ``keep_checkpoints`` kept, and an exact resume: model, EMA, optimizers,
  step, every RNG state and the position in the data order, so the losses after a resume equal those of
  an uninterrupted run. Checkpoints load with ``torch.load(weights_only=True)``;
* gradient accumulation is one big batch for every term but stage 1's adaptive adversarial weight, which is
  computed per micro-batch (and per process under DDP), as any implementation that accumulates must;
* several GPUs: ``torchrun --nproc_per_node N -m fftd_course train-fftd ...`` runs DDP (rank 0 logs and
  writes checkpoints, every rank reads its own share of each epoch, the quantizer's dead-code replacement
  sums its counts over ranks and broadcasts rank 0's codebook).

The outputs of a run folder ``out``: ``config.yaml``, ``log.jsonl``, ``tb/`` (TensorBoard),
``checkpoints/ckpt-00001000.pt``..., ``images/`` (grids), and at the end ``ivqvae.pt`` (stage 1, the input of
stage 2) or ``latent_diffusion.pt`` (stage 2: both stages, :class:`~fftd_course.pipeline.LatentDiffusion`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import re
import signal
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import fftd as fftd_mod
from . import ivqvae as ivqvae_mod
from .diffusion import DDIMSampler, Diffusion, beta_schedule
from .losses import LPIPS, HybridLoss, NLayerDiscriminator, NonFiniteLossError, lpips_weights_available
from .pipeline import (EMA, LatentDiffusion, _eval_mode, cosine_lr, encode_latents, fftd_update, ivqvae_update,
                       latent_scale)

__all__ = ["TrainConfig", "PRESETS", "get_preset", "load_config_file", "make_config", "ConfigError", "train",
           "TrainResult", "CheckpointError", "latest_checkpoint", "save_ivqvae", "load_ivqvae"]


# ---- the configuration ------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A training setting is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every field can be set from a YAML/TOML file or as ``--key value`` on the command line."""

    # --- what to train, on what
    stage: str = "ivqvae"            # "ivqvae" (stage 1, Algorithm 1) or "fftd" (stage 2, Algorithm 2)
    model: str = "toy-f8"            # a named configuration: ivqvae.CONFIGS for stage 1, fftd.CONFIGS for stage 2
    data: str = "toy"                # a folder of images (class sub-folders become labels), or "toy" (toy faces)
    resolution: int = 32             # images are centre-cropped and resized to this many pixels a side
    toy_images: int = 4096           # with data="toy": how many toy faces to draw (seed data_seed)
    data_seed: int = 0               # with data="toy": which toy faces
    hflip: bool = True               # random horizontal flips (stage 2: latents of the flipped images too)
    stage1: str = ""                 # stage 2: the stage-1 run folder (or its ivqvae.pt) whose latents the FFTD learns
    # --- optimisation
    steps: int = 1000                # optimizer steps in all (a resumed run continues up to this number)
    batch_size: int = 32             # images per optimizer step, all GPUs and accumulation steps together
    grad_accum: int = 1              # micro-batches per step: each GPU sees batch_size / (grad_accum * GPUs) at once
    lr: float = 2e-4                 # peak learning rate
    lr_schedule: str = "constant"    # "constant" or "cosine" (to lr_final_factor * lr at the last step)
    warmup_steps: int = 0            # linear warm-up from 0 to lr
    lr_final_factor: float = 0.02    # cosine schedule: the last step's factor on lr
    weight_decay: float = 0.0        # AdamW weight decay (stage 2; DiT uses 0)
    beta1: float = 0.9               # Adam(W) betas; stage 1 uses the GAN betas (0.5, 0.9) of taming
    beta2: float = 0.999             # Adam(W) second-moment decay
    # --- stage 1: the hybrid loss (eq. 15)
    lpips: str = "vgg"               # "vgg" (the real LPIPS, needs torchvision's VGG16 file), "random" (wiring only), "off"
    perceptual_weight: float = 1.0   # weight of L_P
    disc_start: int = 0              # first step of the adversarial term and the discriminator's training (E11)
    disc_weight: float = 0.75        # scale of the adaptive adversarial weight
    disc_layers: int = 3             # PatchGAN depth (2 for images of 32 px and less)
    kmeans_batches: int = 4          # batches whose encoder outputs initialise the codebook by k-means
    # --- stage 2: diffusion
    schedule: str = "linear_rescaled"  # beta schedule (diffusion.SCHEDULES)
    T: int = 500                     # diffusion steps (the paper's T)
    ema_decay: float = 0.9999        # EMA of the FFTD's weights, with the power-3/4 warm-up (pipeline.EMA)
    sample_steps: int = 50           # DDIM steps of the preview grids
    guidance_scale: float = 3.0      # classifier-free guidance of the preview grids (class-conditional models)
    # --- speed
    precision: str = "auto"          # "fp32", "bf16" (autocast) or "auto" (bf16 on CUDA, fp32 elsewhere)
    compile: bool = False            # torch.compile the models (minutes of compilation, then faster steps)
    num_workers: int = 4             # DataLoader worker processes (stage 1; 0 = load in the main process)
    device: str = "auto"             # "auto" (CUDA if present), "cpu", "cuda"; under torchrun: cuda:LOCAL_RANK
    # --- bookkeeping
    out: str = "runs/run"            # the run folder: config, logs, checkpoints, images, final model
    log_every: int = 50              # steps between log lines (the only host-device syncs of the loop)
    sample_every: int = 1000         # steps between image grids (0 = only at the end)
    ckpt_every: int = 1000           # steps between checkpoints (also written at the end and on SIGINT/SIGTERM)
    keep_checkpoints: int = 3        # how many checkpoints to keep
    seed: int = 0                    # model initialisation, data order, noise

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{key}={getattr(self, key)!r}: {why}")

        for f in dataclasses.fields(self):  # types first: a string where a number belongs is refused by name
            value, kind = getattr(self, f.name), f.type
            if kind == "bool" and not isinstance(value, bool):
                raise bad(f.name, "must be true or false")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(f.name, "must be an integer")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise bad(f.name, "must be a number")
            if kind == "str" and not isinstance(value, str):
                raise bad(f.name, "must be a string")
        if self.stage not in ("ivqvae", "fftd"):
            raise bad("stage", "must be 'ivqvae' or 'fftd'")
        names = ivqvae_mod.CONFIGS if self.stage == "ivqvae" else fftd_mod.CONFIGS
        if self.model not in names:
            raise bad("model", f"unknown {self.stage} configuration; choose one of {sorted(names)}")
        for key in ("resolution", "steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "T",
                    "sample_steps", "toy_images", "kmeans_batches"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        for key in ("warmup_steps", "disc_start", "num_workers", "sample_every", "ckpt_every", "seed", "data_seed"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.batch_size % self.grad_accum:
            raise bad("batch_size", f"must be divisible by grad_accum={self.grad_accum}")
        for key in ("lr",):
            if not self.lr > 0 or not math.isfinite(self.lr):
                raise bad(key, "must be a positive number")
        for key in ("weight_decay", "perceptual_weight", "disc_weight"):
            if getattr(self, key) < 0 or not math.isfinite(getattr(self, key)):
                raise bad(key, "must be >= 0")
        for key in ("beta1", "beta2", "ema_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "must lie in [0, 1)")
        if not 0.0 <= self.lr_final_factor <= 1.0:
            raise bad("lr_final_factor", "must lie in [0, 1]")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "must be 'constant' or 'cosine'")
        if self.lpips not in ("vgg", "random", "off"):
            raise bad("lpips", "must be 'vgg', 'random' or 'off'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise bad("precision", "must be 'auto', 'fp32' or 'bf16' (fp16 needs loss scaling and overflows in "
                                   "attention; bf16 has fp32's range)")
        if self.schedule not in ("linear", "linear_rescaled", "cosine"):
            raise bad("schedule", "must be 'linear', 'linear_rescaled' or 'cosine'")
        if self.disc_layers < 1:
            raise bad("disc_layers", "must be at least 1")
        if self.guidance_scale < 0:
            raise bad("guidance_scale", "must be >= 0")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.stage == "fftd" and not self.stage1:
            raise bad("stage1", "stage 2 needs the stage-1 run: set stage1 to its folder (or its ivqvae.pt)")
        if self.stage == "ivqvae":
            c = ivqvae_mod.get_config(self.model)
            if self.resolution % c.f:
                raise bad("resolution", f"must be a multiple of the model's compression factor f = {c.f} ({self.model})")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (checked like :func:`make_config`'s overrides)."""
        return make_config(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """``torch.bfloat16`` when the run uses bf16 autocast on ``device``, else ``None`` (float32)."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """A command-line string (or a file's value) converted to the field's type; bad values named."""
    kind = FIELDS[key].type
    if not isinstance(value, str) or kind == "str":
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if kind == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return int(value) if kind == "int" else float(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: must be {'true or false' if kind == 'bool' else 'a number'}") from None


def make_config(base: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``base`` with ``changes`` applied; an unknown key is refused with the list of known ones."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; TrainConfig has {sorted(FIELDS)}")
    return dataclasses.replace(base, **{k: _coerce(k, v) for k, v in changes.items()})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: PyTorch sees no GPU here; use device=cpu (or auto)")
    return device


def _preset(stage1: dict, stage2: dict) -> dict[str, TrainConfig]:
    return {"ivqvae": TrainConfig(stage="ivqvae", **stage1),
            "fftd": TrainConfig(stage="fftd", stage1=stage1["out"], **{k: v for k, v in stage1.items()
                                                                       if k in ("data", "resolution", "out")
                                                                       and k not in stage2}, **stage2)}


# The presets. Stage 2 of a preset reads stage 1 from the stage-1 preset's `out` folder unless told otherwise.
def _gpu256(name: str) -> dict[str, TrainConfig]:
    # The recommended 256 px recipe on GPUs; the data set (its folder, with or without classes) is --data.
    return _preset(
        dict(model="paper-f64", data="", resolution=256, steps=200_000, batch_size=32, lr=1e-4, beta1=0.5, beta2=0.9,
             disc_start=50_000, num_workers=8, compile=True, log_every=100, sample_every=5000, ckpt_every=5000,
             out=f"runs/{name}/ivqvae"),
        dict(model="paper", out=f"runs/{name}/fftd", steps=400_000, batch_size=256, lr=1e-4, warmup_steps=1000,
             ema_decay=0.9999, compile=True, log_every=100, sample_every=10_000, ckpt_every=10_000))


PRESETS: dict[str, dict[str, TrainConfig]] = {
    # The toy faces of the CPU chapters at 32 px (toy-f8: the paper's 4x4x4 latent grid); minutes on a CPU.
    "toy32": _preset(
        dict(model="toy-f8", data="toy", resolution=32, steps=1500, batch_size=32, lr=2e-4, beta1=0.5, beta2=0.9,
             lr_schedule="cosine", lpips="off", perceptual_weight=0.0, disc_start=750, disc_layers=2,
             num_workers=0, log_every=50, sample_every=500, ckpt_every=500, out="runs/toy32/ivqvae"),
        dict(model="toy", out="runs/toy32/fftd", steps=3000, batch_size=64, lr=1e-3, lr_schedule="cosine",
             warmup_steps=100, ema_decay=0.999, log_every=100, sample_every=1000, ckpt_every=1000)),
    # Any folder of 64 px images (class sub-folders = labels), f = 16 -> a 4x4x4 latent; both stages on about
    # 4,000 images in about 30 minutes on a 2-core CPU (the README gives the measured times).
    "small64": _preset(
        dict(model="small-f16", data="", resolution=64, steps=800, batch_size=16, lr=3e-4, beta1=0.5, beta2=0.9,
             lr_schedule="cosine", warmup_steps=50, lpips="vgg", disc_start=500, disc_layers=2, num_workers=0,
             log_every=50, sample_every=400, ckpt_every=200, out="runs/small64/ivqvae"),
        dict(model="small", out="runs/small64/fftd", steps=2000, batch_size=64, lr=1e-3, lr_schedule="cosine",
             warmup_steps=100, ema_decay=0.999, num_workers=0, log_every=100, sample_every=1000, ckpt_every=500)),
    # CelebA-HQ 256 px, unconditional (a folder without class sub-folders): the paper's f = 64 autoencoder and
    # FFTD at the batch sizes a GPU wants (errata E9: the paper's batch size 1 wastes a GPU and needs 4e6 steps).
    "celebahq256": _gpu256("celebahq256"),
    # AFHQ 256 px: cat / dog / wild sub-folders (3 classes, classifier-free guidance). Same recipe.
    "afhq256": _gpu256("afhq256"),
    # The paper's own settings (section 4.2, Algorithm 1): batch size 1, lr 1e-4, EMA 0.9999, 4e6 steps of both
    # stages, the discriminator from step 250k (E11). Reproduces the recipe, not a sensible use of a GPU (E9).
    "paper": _preset(
        dict(model="paper-f64", data="", resolution=256, steps=4_000_000, batch_size=1, lr=1e-4, beta1=0.9,
             beta2=0.999, disc_start=250_000, num_workers=4, log_every=1000, sample_every=100_000,
             ckpt_every=50_000, out="runs/paper/ivqvae"),
        dict(model="paper", out="runs/paper/fftd", steps=4_000_000, batch_size=1, lr=1e-4, ema_decay=0.9999,
             log_every=1000, sample_every=100_000, ckpt_every=50_000)),
}


def get_preset(name: str, stage: str) -> TrainConfig:
    """The preset ``name`` (:data:`PRESETS`) for ``stage`` ("ivqvae" or "fftd")."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: unknown; choose one of {sorted(PRESETS)}")
    if stage not in ("ivqvae", "fftd"):
        raise ConfigError(f"stage={stage!r}: must be 'ivqvae' or 'fftd'")
    return PRESETS[name][stage]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a ``.yaml``/``.yml`` or ``.toml`` file (a flat mapping of TrainConfig fields, and optionally
    ``preset``); unknown keys are refused by :func:`make_config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    else:
        raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value), got {type(values).__name__}")
    return values


# ---- checkpoints -------------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A training checkpoint is damaged, of another format, or from a run with other settings."""


TRAIN_FORMAT = "fftd_course.train/1"
IVQVAE_FORMAT = "fftd_course.IVQVAE/1"
CKPT_NAME = re.compile(r"ckpt-(\d{8})\.pt")
# Settings a resumed run may change; any other difference means another run (another model or data).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "num_workers", "compile",
                     "device", "precision", "out", "sample_steps", "guidance_scale"}


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, rename: a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass


def _torch_load(path: Path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path} is damaged or not a PyTorch file ({type(e).__name__}: {e}); delete it and "
                              f"resume from an earlier {what}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a {what} (it holds a {type(obj).__name__})")
    return obj


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary files of an interrupted write never match)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_NAME.fullmatch(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save_ivqvae(model: ivqvae_mod.IVQVAE, path: str | Path, meta: dict | None = None) -> Path:
    """Stage 1's result: its configuration and weights (``torch.load(weights_only=True)`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"format": IVQVAE_FORMAT, "config": dataclasses.asdict(model.config),
                  "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}, path)
    return path


def load_ivqvae(path: str | Path, device: torch.device | str = "cpu") -> tuple[ivqvae_mod.IVQVAE, dict]:
    """``(model, meta)`` from :func:`save_ivqvae`'s file, or from a stage-1 run folder (its ``ivqvae.pt``)."""
    from .pipeline import _config_from_dict

    path = Path(path)
    if path.is_dir():
        path = path / "ivqvae.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no stage-1 model at {path}: train it first (python -m fftd_course train-ivqvae ...), "
                                "or point stage1 at the stage-1 run folder")
    ckpt = _torch_load(path, "stage-1 model")
    if ckpt.get("format") != IVQVAE_FORMAT:
        raise CheckpointError(f"{path} is not a stage-1 model (format {ckpt.get('format')!r}, expected {IVQVAE_FORMAT!r})")
    try:
        model = ivqvae_mod.IVQVAE(_config_from_dict(ivqvae_mod.IVQVAEConfig, ckpt["config"]))
        model.load_state_dict(ckpt["weights"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} does not fit this code ({type(e).__name__}: {e})") from None
    return model.to(device).eval(), ckpt.get("meta", {})


# ---- distributed helpers ------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


def _init_distributed(config: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(config.device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return _Dist(rank, world, local), torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(obj: Any, d: _Dist) -> list[Any]:
    if not d.on:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _unwrap(module: nn.Module) -> nn.Module:
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def _average_gradients(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of ``module`` over the ranks, as DDP does for wrapped modules."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, v in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))


def _ddp(module: nn.Module, device: torch.device, rank_local_buffers: bool = False) -> nn.Module:
    """``DistributedDataParallel`` on ``device``; ``rank_local_buffers``: each rank keeps its own buffers (the
    quantizer's usage counts and recent encoder outputs, summed or broadcast by the quantizer itself)."""
    kwargs: dict[str, Any] = {}
    if rank_local_buffers:
        kwargs["broadcast_buffers"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer PyTorch renames broadcast_buffers; same meaning here
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


def _checksum(module: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


# ---- data --------------------------------------------------------------------------------------------------

class _ToyImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, seed: int):
        self.images, self.labels = data_mod.make_toy_faces(n, size, seed)
        self.class_names = data_mod.CLASSES
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def _dataset(config: TrainConfig, progress: bool):
    if config.data == "toy":
        return _ToyImages(config.toy_images, config.resolution, config.data_seed)
    if not config.data:
        raise ConfigError("data='': this preset trains on your own images: pass --data FOLDER (class sub-folders "
                          "become labels; a folder of images without sub-folders trains an unconditional model)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = data_mod.ImageFolder(config.data, config.resolution, verify=True, num_workers=config.num_workers,
                                       progress=progress)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips drawn from ``generator`` (saved in checkpoints, so a resume flips the same way)."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# ---- the run ------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the final file, the last step, how it ended and the log."""

    out: Path
    final: Path | None
    step: int
    status: str  # "finished", "interrupted" or "stopped" (stop_after)
    history: list[dict]
    seconds: float


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and returns (a second Ctrl-C kills)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: writing a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Run:
    """The state of one run: models, optimizers, data, the step; :func:`train` drives it."""

    def __init__(self, config: TrainConfig, d: _Dist, device: torch.device, progress: bool):
        self.config, self.d, self.device, self.progress = config, d, device, progress
        self.out = Path(config.out)
        self.amp_dtype = config.amp_dtype(device)
        self.micro = config.batch_size // (config.grad_accum * d.world)
        if self.micro * config.grad_accum * d.world != config.batch_size or self.micro < 1:
            raise ConfigError(f"batch_size={config.batch_size}: must be divisible by grad_accum x GPUs = "
                              f"{config.grad_accum} x {d.world}")
        self.step = 0
        self.flip_gen = torch.Generator().manual_seed(config.seed + 7919 * (d.rank + 1))
        self.notes: dict[str, Any] = {}

    # -- lr
    def lr_factor(self, step: int) -> float:
        c = self.config
        if c.lr_schedule == "cosine":
            return cosine_lr(c.steps, c.warmup_steps, c.lr_final_factor)(step)
        return min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0

    def set_lr(self, step: int) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = self.config.lr * self.lr_factor(step)


class _Stage1(_Run):
    def build(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.dataset = _dataset(c, self.progress)
        self.class_names = tuple(getattr(self.dataset, "class_names", ()))
        self.model = ivqvae_mod.IVQVAE(ivqvae_mod.get_config(c.model, resolution=c.resolution)).to(self.device)
        if c.lpips == "vgg" and c.perceptual_weight > 0 and not lpips_weights_available():
            LPIPS()  # raises LPIPSWeightsMissing, whose message says where the file goes and how to get it
        perceptual = None
        if c.perceptual_weight > 0 and c.lpips != "off":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                perceptual = LPIPS(random_trunk=c.lpips == "random")
        self.loss = HybridLoss(NLayerDiscriminator(n_layers=c.disc_layers), perceptual,
                               perceptual_weight=c.perceptual_weight if perceptual is not None else 0.0,
                               disc_start=c.disc_start, disc_weight=c.disc_weight, check_finite=False).to(self.device)
        fused = self.device.type == "cuda"
        betas = (c.beta1, c.beta2)
        self.optimizers = {
            "ae": torch.optim.Adam(self.model.parameters(), lr=c.lr, betas=betas, fused=fused),
            "disc": torch.optim.Adam(self.loss.discriminator.parameters(), lr=c.lr, betas=betas, fused=fused)}
        if self.d.on:  # the discriminator is not wrapped in DDP (it also judges x_hat frozen): average by hand
            self.optimizers["disc"].register_step_pre_hook(lambda *_: _average_gradients(self.loss.discriminator))
        self.sampler = data_mod.EpochSampler(len(self.dataset), seed=c.seed, rank=self.d.rank, world_size=self.d.world)
        self.fixed = torch.stack([self.dataset[i][0] for i in range(min(8, len(self.dataset)))])

    def wrap(self) -> None:
        c, model = self.config, self.model
        self.forward: Callable = model
        if self.d.on:
            self.forward = _ddp(model, self.device, rank_local_buffers=True)
        if c.compile:
            self.forward = torch.compile(self.forward)
            if self.loss.perceptual is not None:
                self.loss.perceptual = torch.compile(self.loss.perceptual)

    def init_codebook(self, batches: Iterator[torch.Tensor]) -> None:
        """k-means on the encoder outputs of a few batches, before the first step (not inside a compiled forward)."""
        q = self.model.quantizer
        if not getattr(q, "kmeans_init", False) or bool(q.initialized):
            return
        with torch.no_grad(), _eval_mode(self.model):
            z = torch.cat([self.model.encode(next(batches)) for _ in range(self.config.kmeans_batches)])
        q.init_codebook(z)
        if self.d.on:
            dist.broadcast(q.codebook.data, src=0)

    def batches(self) -> Iterator[torch.Tensor]:
        """Micro-batches in the sampler's order, forever; ``self.position`` counts the items handed out."""
        c = self.config
        while True:
            loader = data_mod.make_loader(self.dataset, self.micro, self.sampler, num_workers=c.num_workers)
            for x, _ in loader:
                self.position["index"] += len(x)
                x = x.to(self.device, non_blocking=True)
                yield _flip(x, self.flip_gen) if c.hflip else x
            self.position = {"epoch": self.position["epoch"] + 1, "index": 0}
            self.sampler.set_position(self.position["epoch"], 0)

    def train_step(self, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        logs = ivqvae_update(self.model, self.loss, self.optimizers["ae"], self.optimizers["disc"], micro_batches,
                             step, forward=self.forward, amp_dtype=self.amp_dtype)
        if self.config.compile and hasattr(self.model.quantizer, "maintain"):
            self.model.quantizer.maintain(sum(len(x) for x in micro_batches) * self.model.config.latent_size ** 2)
        return logs

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "discriminator": self.loss.discriminator.state_dict()}

    def load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.loss.discriminator.load_state_dict(ckpt["discriminator"])

    @torch.no_grad()
    def images(self) -> dict[str, torch.Tensor]:
        with _eval_mode(self.model):
            x = self.fixed.to(self.device)
            x_hat = self.model(x)[0].float()
        return {"reconstructions": torch.cat([x, x_hat]).cpu()}

    def finish(self) -> Path:
        usage = self.model.quantizer.usage()
        meta = {"data": self.config.data, "resolution": self.config.resolution, "class_names": list(self.class_names),
                "toy_images": self.config.toy_images, "data_seed": self.config.data_seed, "steps": self.step,
                "codes_used": usage.distinct, "num_codes": self.model.config.num_codes}
        return save_ivqvae(self.model, self.out / "ivqvae.pt", meta)


class _Stage2(_Run):
    def build(self) -> None:
        c = self.config
        self.ivqvae, self.stage1_meta = load_ivqvae(c.stage1, self.device)
        # The data and resolution stage 1 was trained on, unless this run names its own data folder.
        # With the toy faces, the same faces as stage 1 (their count and seed come from stage 1's file).
        changes = {"resolution": self.ivqvae.config.resolution}
        if not c.data:
            changes["data"] = self.stage1_meta.get("data", "")
        if changes.get("data", c.data) == "toy" and self.stage1_meta.get("data") == "toy":
            changes.update(toy_images=self.stage1_meta.get("toy_images", c.toy_images),
                           data_seed=self.stage1_meta.get("data_seed", c.data_seed))
        self.config = c = c.replace(**changes)
        self.latents, self.labels, self.class_names, self.scale = self._latents()
        torch.manual_seed(c.seed)
        fc = fftd_mod.get_config(c.model, in_channels=self.ivqvae.config.z_channels,
                                 input_size=self.ivqvae.config.latent_size, num_classes=len(self.class_names))
        self.model = fftd_mod.FFTD(fc).to(self.device)
        self.ema = EMA(self.model, c.ema_decay)
        self.diffusion = Diffusion(beta_schedule(c.schedule, c.T))
        self.optimizers = {"fftd": torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                                     weight_decay=c.weight_decay, fused=self.device.type == "cuda")}
        self.sampler = data_mod.EpochSampler(len(self.latents), seed=c.seed, rank=self.d.rank, world_size=self.d.world)

    def _latents(self):
        """Encode the data set once with the frozen stage 1 (and its flips with ``hflip``); cached in the run folder."""
        c = self.config
        stage1_file = Path(c.stage1) / "ivqvae.pt" if Path(c.stage1).is_dir() else Path(c.stage1)
        key = hashlib.sha256(stage1_file.read_bytes()).hexdigest()[:16] + f"-{c.data}-{c.resolution}-{c.hflip}"
        cache = self.out / "latents.pt"
        if self.d.main:
            cached = torch.load(cache, map_location="cpu", weights_only=True) if cache.is_file() else None
            if cached is None or cached.get("key") != key:
                dataset = _dataset(c, self.progress)
                loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=0 if c.data == "toy" else c.num_workers)
                zs, ys = [], []
                for x, y in tqdm(loader, desc="encoding latents (once)", disable=not self.progress):
                    x = x.to(self.device)
                    zs.append(encode_latents(self.ivqvae, x))
                    if c.hflip:
                        zs.append(encode_latents(self.ivqvae, x.flip(-1)))
                    ys.extend([y, y] if c.hflip else [y])
                z, y = torch.cat(zs), torch.cat(ys)
                names = list(getattr(dataset, "class_names", ()))
                cached = {"key": key, "latents": z, "labels": y, "class_names": names, "scale": latent_scale(z),
                          "skipped": [str(p) for p, _ in getattr(dataset, "skipped", [])]}
                self.out.mkdir(parents=True, exist_ok=True)
                _atomic_save(cached, cache)
        self.d.barrier()
        if not self.d.main:
            cached = torch.load(cache, map_location="cpu", weights_only=True)
        self.notes["skipped_images"] = len(cached.get("skipped", []))
        scale = float(cached["scale"])
        latents = (cached["latents"] * scale).to(self.device)
        names = tuple(cached["class_names"])
        labels = cached["labels"].to(self.device) if names else None
        return latents, labels, names, scale

    def wrap(self) -> None:
        self.forward: Callable = self.model
        if self.d.on:
            self.forward = _ddp(self.model, self.device)
        if self.config.compile:
            self.forward = torch.compile(self.forward)

    def init_codebook(self, batches) -> None:
        pass

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        while True:
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            for start in range(0, len(order) - self.micro + 1, self.micro):
                idx = order[start:start + self.micro].to(self.device)
                self.position["index"] += self.micro
                yield self.latents[idx], (self.labels[idx] if self.labels is not None else None)
            self.position = {"epoch": self.position["epoch"] + 1, "index": 0}
            self.sampler.set_position(self.position["epoch"], 0)

    def train_step(self, micro_batches, step: int) -> dict[str, torch.Tensor]:
        loss = fftd_update(self.model, self.diffusion, self.optimizers["fftd"], self.ema, micro_batches,
                           forward=self.forward, amp_dtype=self.amp_dtype)
        return {"loss": loss}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "scale": self.scale,
                "class_names": list(self.class_names)}

    def load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])

    def generator(self) -> LatentDiffusion:
        return LatentDiffusion(self.ivqvae, self.ema.model, self.diffusion, self.scale, self.class_names,
                               meta={"config": self.config.to_dict(), "steps": self.step})

    @torch.no_grad()
    def images(self) -> dict[str, torch.Tensor]:
        ld = self.generator()
        c = self.config
        if self.class_names:
            classes = [i for i in range(len(self.class_names)) for _ in range(8)]
            images = ld.sample(classes, num_steps=c.sample_steps, guidance_scale=c.guidance_scale, seed=c.seed)
        else:
            images = ld.sample(n=16, num_steps=c.sample_steps, seed=c.seed)
        return {"samples": images.float().cpu()}

    def finish(self) -> Path:
        path = self.out / "latent_diffusion.pt"
        self.generator().save(path)
        return path


def _grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    from torchvision.utils import make_grid

    return make_grid(((images.clamp(-1, 1) + 1) / 2), nrow=nrow)


def _config_differences(saved: dict, config: TrainConfig) -> list[str]:
    now = config.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
            if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]


def train(config: TrainConfig, *, resume: str | Path | bool = True, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or resume) the training ``config`` describes; see the module docstring for what it writes.

    ``resume=True`` continues from the latest complete checkpoint in ``config.out`` if there is one;
    a path resumes from that checkpoint file; ``False`` refuses to start in a folder that holds checkpoints.
    ``stop_after`` ends the loop after that many steps of this call (with a checkpoint), as a signal would.
    """
    d, device = _init_distributed(config)
    run = (_Stage1 if config.stage == "ivqvae" else _Stage2)(config, d, device, progress)
    started = time.perf_counter()
    run.build()
    config = run.config
    out = run.out
    if d.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    d.barrier()
    ckpt_path = None
    if resume is True:
        ckpt_path = latest_checkpoint(out)
    elif resume:
        ckpt_path = Path(resume)
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt_path}")
    elif latest_checkpoint(out) is not None:
        raise CheckpointError(f"{out} already holds checkpoints; resume it (the default) or choose another out folder")
    run.position = {"epoch": 0, "index": 0}
    log_path = out / "log.jsonl"
    history: list[dict] = []
    if ckpt_path is not None:
        ckpt = _torch_load(ckpt_path, "checkpoint")
        if ckpt.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"{ckpt_path} is not a training checkpoint (format {ckpt.get('format')!r})")
        if ckpt["config"].get("stage") != config.stage:
            raise CheckpointError(f"{ckpt_path} is a {ckpt['config'].get('stage')} checkpoint; this run trains "
                                  f"{config.stage}: use another out folder")
        diffs = _config_differences(ckpt["config"], config)
        if diffs:
            raise CheckpointError(f"{ckpt_path} was written by a run with other settings ({'; '.join(diffs)}); use the "
                                  "same settings to resume, or another out folder for a new run")
        if ckpt["world_size"] != d.world:
            raise CheckpointError(f"{ckpt_path} was written by {ckpt['world_size']} processes, this run has {d.world}: "
                                  "the data order and random streams cannot continue exactly; resume with the same count")
        try:
            run.load_state(ckpt["state"])
            for name, opt in run.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{ckpt_path} does not fit this model ({type(e).__name__}: {e})") from None
        run.step = int(ckpt["step"])
        mine = ckpt["ranks"][d.rank]
        run.position = dict(mine["position"])
        run.flip_gen.set_state(mine["flip"])
        _set_rng_state(mine["rng"], device)
        if log_path.is_file() and d.main:  # drop log lines past the checkpoint: they are about to be redone
            lines = [json.loads(s) for s in log_path.read_text().splitlines() if s.strip()]
            history = [h for h in lines if "finished" not in h and h.get("step", -1) <= run.step]
            log_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        if d.main:
            print(f"resuming {out} from {ckpt_path.name} (step {run.step})", flush=True)
    else:
        torch.manual_seed(config.seed + d.rank)
        random.seed(config.seed + d.rank)
        if d.main and log_path.exists():
            log_path.unlink()
    run.sampler.set_position(run.position["epoch"], run.position["index"])
    if d.main:
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    batches = run.batches()
    if ckpt_path is None:
        run.init_codebook(batches)
    run.wrap()
    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=run.step)

    def save_checkpoint() -> None:
        ranks = _gather({"position": dict(run.position), "flip": run.flip_gen.get_state(), "rng": _rng_state(device),
                         "checksum": _checksum(_unwrap(run.model))}, d)
        sums = [r["checksum"] for r in ranks]
        if d.main:
            if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
                warnings.warn(f"step {run.step}: the GPUs' model copies differ (parameter sums {sums})")
            ckpt = {"format": TRAIN_FORMAT, "config": config.to_dict(), "step": run.step, "world_size": d.world,
                    "state": run.state(), "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
                    "ranks": [{k: r[k] for k in ("position", "flip", "rng")} for r in ranks],
                    "replica_checksums": sums, "torch": str(torch.__version__)}
            _atomic_save(ckpt, out / "checkpoints" / f"ckpt-{run.step:08d}.pt")
            for old in checkpoints(out)[:-config.keep_checkpoints]:
                old.unlink()
        d.barrier()

    def write_images() -> None:
        if not d.main:
            return
        (out / "images").mkdir(exist_ok=True)
        from torchvision.utils import save_image

        for name, images in run.images().items():
            grid = _grid(images)
            writer.add_image(name, grid, run.step)
            save_image(grid, out / "images" / f"{name}-{run.step:08d}.png")

    status = "finished"
    steps_this_call = 0
    pending: dict[str, torch.Tensor] = {}
    pending_steps = 0
    window_start, window_images = time.perf_counter(), 0
    stop_now = False
    bar = tqdm(total=config.steps, initial=run.step, desc=f"training {config.stage}", disable=not (progress and d.main),
               unit="step")
    with _Stop() as stop:
        while run.step < config.steps:
            step = run.step
            run.set_lr(step)
            micro = [next(batches) for _ in range(config.grad_accum)]
            logs = run.train_step(micro, step)
            for k, v in logs.items():
                pending[k] = pending[k] + v if k in pending else v.clone()
            pending_steps += 1
            window_images += config.batch_size
            run.step += 1
            steps_this_call += 1
            bar.update(1)
            last = run.step == config.steps
            stopping = stop_after is not None and steps_this_call >= stop_after
            if run.step % config.log_every == 0 or last or stopping:
                keys = list(pending)
                values = dict(zip(keys, (torch.stack([pending[k].float() for k in keys]) / pending_steps).tolist()))
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteLossError(
                        f"steps {run.step - pending_steps}-{run.step - 1}: the loss term '{bad[0]}' is not finite "
                        f"({values}). Training stopped without writing a checkpoint: lower lr, check the data, or "
                        f"resume from {latest_checkpoint(out)}", step=run.step - 1, term=bad[0])
                seconds = time.perf_counter() - window_start
                values.update(step=run.step, lr=config.lr * run.lr_factor(step), images_per_s=window_images / seconds)
                history.append(values)
                if d.main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(values) + "\n")
                    for k, v in values.items():
                        if k != "step":
                            writer.add_scalar(f"{config.stage}/{k}", v, run.step)
                    main_key = "l1" if config.stage == "ivqvae" else "loss"
                    bar.set_postfix({main_key: f"{values[main_key]:.4f}", "img/s": f"{values['images_per_s']:.0f}"})
                pending, pending_steps = {}, 0
                window_start, window_images = time.perf_counter(), 0
                if d.on:  # agree on a stop request (signals may reach the ranks at different steps)
                    flag = torch.tensor([float(stop.requested)], device=device)
                    dist.all_reduce(flag)
                    stop_now = bool(flag.item())
            if not d.on:
                stop_now = stop.requested
            if config.sample_every and run.step % config.sample_every == 0 and not last:
                write_images()
            saved = (config.ckpt_every and run.step % config.ckpt_every == 0) or last
            if saved:
                save_checkpoint()
            if (stop_now or stopping) and not last:
                if not saved:
                    save_checkpoint()
                status = "interrupted" if stop_now else "stopped"
                break
    bar.close()
    final = None
    if status == "finished":
        write_images()
        if d.main:
            final = run.finish()
            summary = {"finished": True, "step": run.step, "final": str(final), **run.notes,
                       "skipped_images": len(getattr(getattr(run, "dataset", None), "skipped", []) or [])
                       if config.stage == "ivqvae" else run.notes.get("skipped_images", 0)}
            with open(log_path, "a") as f:
                f.write(json.dumps(summary) + "\n")
    if writer is not None:
        writer.close()
    d.barrier()
    return TrainResult(out, final, run.step, status, history, time.perf_counter() - started)
