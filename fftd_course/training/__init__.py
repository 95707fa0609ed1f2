"""Training: one engine for every stage, the stages as plugins, the settings and presets.

* :mod:`.config`: :class:`TrainConfig` (every setting, checked by name), setting files, presets;
* :mod:`.registry` and :mod:`.stages`: ``STAGES[name]`` is the class that trains a stage (stage 1 ``ivqvae``,
  stage 2 ``fftd``, the pixel-space DDPM baseline ``ddpm``); a new stage is one class and one registry entry,
  and the command line's train commands, presets and checkpoint formats follow from it;
* :mod:`.engine`: :func:`train`, the loop (checkpoints, exact resume, signals, non-finite guard, DDP);
* :mod:`.distributed`: the few collective operations the engine needs under ``torchrun``.

Checkpoint files themselves (the one loader, atomic writer, lock and branches) are :mod:`fftd_course.checkpoints`.
"""

from ..checkpoints import CheckpointError, latest_checkpoint
from ..checkpoints import list_checkpoints as checkpoints
from . import stages  # noqa: F401 - registers the stages before anything reads STAGES
from .config import (FIELDS, ConfigError, TrainConfig, get_preset, load_config_file, make_config, micro_batch,
                     preset_names, resolve_device)
from .engine import RESUMABLE_CHANGES, TRAIN_FORMAT, TrainResult, train
from .registry import STAGES, register
from .stages.base import Stage
from .stages.ivqvae import IVQVAE_FORMAT, load_ivqvae, save_ivqvae

PRESETS = {name: {stage: get_preset(name, stage) for stage, cls in STAGES.items() if name in cls.presets}
           for name in preset_names()}

__all__ = ["TrainConfig", "ConfigError", "FIELDS", "PRESETS", "get_preset", "preset_names", "load_config_file",
           "make_config", "micro_batch", "resolve_device", "train", "TrainResult", "STAGES", "register", "Stage", "CheckpointError",
           "checkpoints", "latest_checkpoint", "save_ivqvae", "load_ivqvae", "TRAIN_FORMAT", "IVQVAE_FORMAT",
           "RESUMABLE_CHANGES"]
