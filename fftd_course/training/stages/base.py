"""What a stage is to the engine: the hooks it declares, and what every stage shares (data order, lr, flips).

:class:`Stage` is the interface :func:`~fftd_course.training.engine.train` drives. A stage builds its models,
optimizers and data in ``__init__``; the engine then asks it, in this order:

====================  ===================================================================================
``fingerprint()``     what the run's inputs are (data, an upstream model's hash): a resume compares them
``prepare(batches)``  once before the first step of a fresh run (stage 1: k-means on encoder outputs)
``wrap()``            compile / DDP-wrap the trained model (``self.forward``)
``batches()``         micro-batches forever, in the sampler's order; ``self.position`` counts them
``train_step(mb, s)`` one optimizer step over the micro-batches ``mb`` at step ``s``: logged terms as
                      detached 0-dim tensors, no host reads
``state()`` /         everything of the stage a checkpoint holds, and back (the engine adds optimizers,
``load_state(d)``     step, RNG states and the data position)
``images()``          preview grids, by name
``finish()``          write the stage's result (``final_file`` in the run folder), return its path
====================  ===================================================================================

Class attributes name the stage (``name``: the ``stage`` setting and the checkpoints' tag), its command
(``command``, ``help``), its presets and the loss the progress bar shows. A new stage subclasses this,
fills those in and is decorated with :func:`~fftd_course.training.registry.register`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from ... import data as data_mod
from ...pipeline import cosine_lr, fftd_update
from ..config import ConfigError, TrainConfig, micro_batch
from ..distributed import Dist, no_sync

__all__ = ["Stage", "DenoiserStage", "file_hash", "dataset_for", "flip", "preview_samples", "PREVIEW_CLASSES", "PREVIEW_PER_CLASS"]

PREVIEW_CLASSES, PREVIEW_PER_CLASS = 8, 8  # preview grids: at most 64 samples, however many classes


class Stage:
    """One trainable stage; subclasses fill in the class attributes and the hooks marked "stage's own"."""

    name: ClassVar[str]                       # the `stage` setting; the tag in this stage's checkpoints
    command: ClassVar[str]                    # the command line's train command
    help: ClassVar[str]                       # one line for --help
    final_file: ClassVar[str]                 # what finish() writes in the run folder
    log_key: ClassVar[str]                    # the logged term the progress bar shows
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    # ---- the stage's own: settings -------------------------------------------------------------------
    @classmethod
    def model_configs(cls) -> dict[str, Any]:
        """The named model configurations ``config.model`` may take."""
        raise NotImplementedError

    @classmethod
    def validate(cls, config: TrainConfig) -> tuple[str, str] | None:
        """``(key, why)`` for a setting this stage cannot use, else None (TrainConfig raises it by name)."""
        return None

    # ---- shared by every stage ------------------------------------------------------------------------
    def __init__(self, config: TrainConfig, d: Dist, device: torch.device, progress: bool):
        self.config, self.d, self.device, self.progress = config, d, device, progress
        self.out = Path(config.out)
        self.amp_dtype = config.amp_dtype(device)
        self.micro = micro_batch(config, d.world)
        self.step = 0
        self.position = {"epoch": 0, "index": 0}
        self.flip_gen = torch.Generator().manual_seed(config.seed + 7919 * (d.rank + 1))
        self.notes: dict[str, Any] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.forward: Any = None

    def check_size(self, n: int, what: str) -> None:
        """Refuse, before any work, a data set with fewer items per rank than one micro-batch... of a step."""
        per_rank = n // self.d.world
        if per_rank < self.micro * self.config.grad_accum or n < self.config.batch_size:
            raise ConfigError(f"batch_size={self.config.batch_size}: the data set has only {n} {what}, fewer than one "
                              f"batch{f' over {self.d.world} processes' if self.d.on else ''}: lower --batch-size or "
                              "add data")

    def sampler(self, n: int) -> data_mod.EpochSampler:
        return data_mod.EpochSampler(n, seed=self.config.seed, rank=self.d.rank, world_size=self.d.world)

    def lr_factor(self, step: int, horizon: int | None = None) -> float:
        """The learning-rate factor at ``step``; a cosine runs over ``horizon`` steps (default ``config.steps``)."""
        c = self.config
        if c.lr_schedule == "cosine":
            return cosine_lr(horizon or c.steps, c.warmup_steps, c.lr_final_factor)(step)
        return min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0

    def set_lr(self, step: int, horizon: int | None = None) -> float:
        lr = self.config.lr * self.lr_factor(step, horizon)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def no_sync(self):
        """DDP's ``no_sync`` of the wrapped model (a no-op without DDP), for all but a step's last micro-batch."""
        return no_sync(self.forward)

    def next_epoch(self, sampler: data_mod.EpochSampler) -> None:
        self.position = {"epoch": self.position["epoch"] + 1, "index": 0}
        sampler.set_position(self.position["epoch"], 0)

    # ---- the stage's own: hooks (see the module docstring) -----------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {}

    def prepare(self, batches: Iterator[Any]) -> None:
        pass

    def wrap(self) -> None:
        raise NotImplementedError

    def batches(self) -> Iterator[Any]:
        raise NotImplementedError

    def train_step(self, micro_batches: list[Any], step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def model(self) -> torch.nn.Module:
        """The trained module (unwrapped): its parameters' checksum is compared over ranks and checked finite."""
        raise NotImplementedError

    def images(self) -> dict[str, torch.Tensor]:
        return {}

    def finish(self) -> Path:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """What the last log line adds about the finished run."""
        return dict(self.notes)



class DenoiserStage(Stage):
    """What the two diffusion stages share (stage 2's FFTD, the pixel-space DDPM baseline): a noise predictor
    ``self._model`` trained with the epsilon loss by ``pipeline.fftd_update`` under AdamW ``optimizers[opt_key]``,
    an EMA of its weights ``self.ema``, ``self.diffusion`` and ``self.class_names``."""

    opt_key: ClassVar[str]

    def train_step(self, micro_batches: list[Any], step: int) -> dict[str, torch.Tensor]:
        loss = fftd_update(self._model, self.diffusion, self.optimizers[self.opt_key], self.ema, micro_batches,
                           forward=self.forward, amp_dtype=self.amp_dtype, no_sync=self.no_sync())
        return {"loss": loss}

    def state(self) -> dict:
        return {"model": self._model.state_dict(), "ema": self.ema.state_dict(), "class_names": list(self.class_names)}

    def load_state(self, state: dict) -> None:
        self._model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])


def file_hash(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a file: names an upstream model (stage 1 for stage 2)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def dataset_for(config: TrainConfig, progress: bool) -> torch.utils.data.Dataset:
    """The data set ``config.data`` names: the toy faces, or an image folder checked file by file."""
    import warnings

    if config.data == "toy":
        return data_mod.ToyFaces(config.toy_images, config.resolution, config.data_seed)
    if not config.data:
        raise ConfigError("data='': this preset trains on your own images: pass --data FOLDER (class sub-folders "
                          "become labels; a folder of images without sub-folders trains an unconditional model)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = data_mod.ImageFolder(config.data, config.resolution, verify=True,
                                           num_workers=config.num_workers, progress=progress)
        except (ValueError, OSError) as e:  # empty, all corrupt, not a folder: the settings' mistake, by name
            raise ConfigError(f"data={config.data!r}: {e}") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset


def data_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What the data order depends on: the toy faces' draw, or a folder's image files (names listed, not read).

    Stored in checkpoints; a resume refuses a folder whose files changed, since the saved position in the data
    order would then point at other images.
    """
    if config.data == "toy":
        return {"data": "toy", "items": config.toy_images, "seed": config.data_seed, "resolution": config.resolution}
    folder = data_mod.ImageFolder(config.data, config.resolution, verify=False, progress=False)
    names = "\n".join(str(Path(p).relative_to(folder.root)) for p in folder.files)
    return {"data": config.data, "files": len(folder.files), "resolution": config.resolution,
            "names_sha256": hashlib.sha256(names.encode()).hexdigest()[:16]}


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips drawn from ``generator`` (saved in checkpoints, so a resume flips the same way)."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def preview_samples(generator: Any, config: TrainConfig, class_names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A generator's preview grid: at most 8 classes (evenly spread over all of them) x 8 samples, or 16
    unconditional samples, with the run's sampling settings (the stages of both generators use it)."""
    c = config
    if class_names:
        k = len(class_names)
        shown = sorted({round(i * (k - 1) / max(1, PREVIEW_CLASSES - 1)) for i in range(min(k, PREVIEW_CLASSES))})
        classes = [i for i in shown for _ in range(PREVIEW_PER_CLASS)]
        images = generator.sample(classes, num_steps=c.sample_steps, guidance_scale=c.guidance_scale, seed=c.seed)
    else:
        images = generator.sample(n=16, num_steps=c.sample_steps, seed=c.seed)
    return {"samples": images.float().cpu()}
