"""The settings of a training run: :class:`TrainConfig`, files of settings, named presets.

One frozen dataclass for every stage (flat, so every field is also a ``--key`` option of the command line).
Values are checked where they enter (:meth:`TrainConfig.__post_init__`; a stage adds its own checks in
:meth:`~fftd_course.training.stages.base.Stage.validate`), so a mistake is refused by name before any work.
Presets come from the stages: each stage class lists its own (``Stage.presets``), see :func:`get_preset`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .registry import STAGES

__all__ = ["ConfigError", "TrainConfig", "FIELDS", "make_config", "load_config_file", "resolve_device",
           "get_preset", "preset_names", "micro_batch"]


class ConfigError(ValueError):
    """A training setting is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every field can be set from a YAML/TOML file or as ``--key value`` on the command line."""

    # --- what to train, on what
    stage: str = "ivqvae"            # which stage (training.STAGES): "ivqvae" (stage 1, Algorithm 1), "fftd" (stage 2, Algorithm 2), "ddpm" (the pixel-space baseline)
    model: str = "toy-f8"            # a named configuration: ivqvae.CONFIGS for stage 1, fftd.CONFIGS for stage 2, unet.CONFIGS for ddpm
    data: str = "toy"                # a folder of images (class sub-folders become labels), "toy" (toy faces); stage 2: "" = stage 1's
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
    # --- stage 2 and the ddpm baseline: diffusion
    schedule: str = "linear_rescaled"  # beta schedule (diffusion.SCHEDULES)
    T: int = 500                     # diffusion steps (the paper's T)
    ema_decay: float = 0.9999        # EMA of the FFTD's (U-Net's) weights, with the power-3/4 warm-up (pipeline.EMA)
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
        if self.stage not in STAGES:
            raise bad("stage", f"unknown stage; choose one of {sorted(STAGES)}")
        stage = STAGES[self.stage]
        names = stage.model_configs()
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
        problem = stage.validate(self)
        if problem is not None:
            raise bad(*problem)

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


def micro_batch(config: TrainConfig, world: int) -> int:
    """Images per process per forward pass: ``batch_size / (grad_accum x world)``, refused when it does not divide."""
    micro = config.batch_size // (config.grad_accum * world)
    if micro * config.grad_accum * world != config.batch_size or micro < 1:
        raise ConfigError(f"batch_size={config.batch_size}: must be divisible by grad_accum x GPUs = "
                          f"{config.grad_accum} x {world}")
    return micro


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: PyTorch sees no GPU here; use device=cpu (or auto)")
    return device


def preset_names() -> list[str]:
    """Every preset name any registered stage defines."""
    return sorted({name for stage in STAGES.values() for name in stage.presets})


def get_preset(name: str, stage: str) -> TrainConfig:
    """The preset ``name`` for ``stage`` (a name in :data:`~fftd_course.training.registry.STAGES`)."""
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: unknown; choose one of {sorted(STAGES)}")
    presets = STAGES[stage].presets
    if name not in presets:
        raise ConfigError(f"preset={name!r}: unknown for stage {stage!r}; choose one of {sorted(presets)}")
    return TrainConfig(stage=stage, **presets[name])


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
