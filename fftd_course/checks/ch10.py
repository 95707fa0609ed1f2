"""Checks for chapter 10 (full-scale training: the batch plan, atomic checkpoints, hours from a run's log).

The checks compare with the trainer itself (:mod:`fftd_course.train`): its per-GPU micro-batch and data order,
its checkpoint file pattern. They write only into temporary folders and run in well under a second.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .. import data as data_mod
from .. import train as train_mod
from .core import CheckFailure, CheckResult, fresh_seed, run_check

__all__ = ["check_training_plan", "check_save_checkpoint_atomically", "check_hours_for_steps",
           "training_plan_reference", "hours_for_steps_reference", "CrashHalfway"]


# ---- exercise 1: per-GPU micro-batch and optimizer steps per epoch ---------------------------------------------

def training_plan_reference(config: train_mod.TrainConfig, n_images: int, gpus: int) -> tuple[int, float]:
    """``(micro_batch, steps_per_epoch)`` of ``config`` on ``n_images`` images and ``gpus`` GPUs, read from the trainer.

    The micro-batch is what the trainer computes (``micro_batch``) (it raises ``ConfigError``, a ``ValueError``, when the
    batch cannot be split evenly); an epoch is one pass of the :class:`~fftd_course.data.EpochSampler` over the
    items the stage trains on (stage 2 with ``hflip``: the latents of every image and of its mirror image),
    each rank taking an equal share and dropping what does not fill a whole micro-batch. Gradient accumulation
    turns ``grad_accum`` micro-batches into one optimizer step, so the step count per epoch can be fractional.
    """
    micro = train_mod.micro_batch(config, gpus)
    items = n_images * (2 if config.stage == "fftd" and config.hflip else 1)
    per_rank = data_mod.EpochSampler(items, world_size=gpus).num_samples
    return micro, (per_rank // micro) / config.grad_accum


def _plan_cases(seed: int) -> list[tuple[train_mod.TrainConfig, int, int]]:
    rng = random.Random(seed)
    s1, s2 = train_mod.get_preset("toy32", "ivqvae"), train_mod.get_preset("celebahq256", "fftd")
    cases = [
        (s1, 4096, 1),
        (s1.replace(grad_accum=2), 1000, 2),
        (s1.replace(batch_size=48, grad_accum=3), 1001, 2),
        (train_mod.get_preset("toy32", "fftd"), 1000, 1),
        (s2, 30000, 8),
        (s2.replace(hflip=False, grad_accum=4), 30000, 8),
        (s2.replace(grad_accum=8), 14630, 1),
    ]
    for _ in range(3):  # fresh sizes every call
        stage = rng.choice([s1, s2])
        accum, gpus = rng.choice([1, 2, 4]), rng.choice([1, 2, 4, 8])
        cases.append((stage.replace(batch_size=accum * gpus * rng.choice([2, 4, 8, 16]), grad_accum=accum,
                                    hflip=rng.random() < 0.5), rng.randrange(2000, 40000), gpus))
    return cases


def check_training_plan(fn: Callable[[train_mod.TrainConfig, int, int], tuple[int, float]]) -> CheckResult:
    """``fn(config, n_images, gpus)`` returns the trainer's per-GPU micro-batch and optimizer steps per epoch,
    and raises ``ValueError`` where the trainer refuses the split."""

    def trial() -> None:
        for config, n, gpus in _plan_cases(fresh_seed()):
            want = training_plan_reference(config, n, gpus)
            got = fn(config, n, gpus)
            what = (f"stage {config.stage}, batch_size {config.batch_size}, grad_accum {config.grad_accum}, hflip "
                    f"{config.hflip}, {n} images, {gpus} GPU(s)")
            if not (isinstance(got, tuple) and len(got) == 2):
                raise CheckFailure(f"{what}: return a pair (micro_batch, steps_per_epoch), got {got!r}")
            micro, steps = got
            if int(micro) != micro or int(micro) != want[0]:
                raise CheckFailure(f"{what}: your micro-batch per GPU is {micro!r}, the trainer's {want[0]}")
            if abs(float(steps) - want[1]) > 1e-9 * max(1.0, want[1]):
                raise CheckFailure(f"{what}: your optimizer steps per epoch {steps!r}, the trainer's {want[1]:g}")
        for config, gpus in ((train_mod.get_preset("paper", "fftd"), 2),
                             (train_mod.get_preset("toy32", "ivqvae"), 3)):
            try:
                got = fn(config, 4096, gpus)
            except ValueError:
                continue
            raise CheckFailure(f"batch_size {config.batch_size}, grad_accum {config.grad_accum} on {gpus} GPUs: the "
                               f"trainer refuses this split, your function returned {got!r}; raise a ValueError")

    return run_check("training_plan", trial,
                     hint="a micro-batch is what one GPU holds at once: the batch of one optimizer step is shared "
                          "by the GPUs and by the accumulation steps, and must split evenly. For the epoch: how many "
                          "items does each stage iterate over (read _latents and batches in fftd_course/train.py), "
                          "how many of them does one rank see, and what happens to a last, incomplete micro-batch?")


# ---- exercise 2: find the bug in saving a checkpoint ----------------------------------------------------------

class CrashHalfway:
    """Stands for a crash (power cut, ``kill -9``, a full disk) in the middle of ``torch.save``: pickling it fails
    after the file has been opened and partly written."""

    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of writing the checkpoint")


def _same(loaded: object, want: dict) -> bool:
    return (isinstance(loaded, dict) and loaded.get("step") == want["step"]
            and isinstance(loaded.get("weights"), torch.Tensor) and torch.equal(loaded["weights"], want["weights"]))


def check_save_checkpoint_atomically(fn: Callable[[dict, Path], object]) -> CheckResult:
    """``fn(obj, path)`` writes a checkpoint that survives a crash in the middle of the next write."""

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        first, second, third = ({"step": s, "weights": torch.randn(256, generator=g)} for s in (1, 2, 3))
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp)
            folder = run / "checkpoints"
            folder.mkdir()
            p1, p2, p3 = (folder / f"ckpt-{s:08d}.pt" for s in (1, 2, 3))
            for obj, path in ((first, p1), (second, p2)):
                fn(obj, path)
                if not path.is_file():
                    raise CheckFailure(f"after saving step {obj['step']} there is no file {path.name}")
                if not _same(torch.load(path, weights_only=True), obj):
                    raise CheckFailure(f"{path.name} does not load back (torch.load, weights_only=True) to what was saved")
            extra = sorted(p.name for p in folder.iterdir() if p not in (p1, p2))
            if extra:
                raise CheckFailure(f"after two successful saves the folder also holds {extra}: the file that was "
                                   "written should have become the checkpoint, leaving nothing behind")
            for path in (p2, p3):  # overwrite an existing checkpoint, then write a new one; both crash halfway
                try:
                    fn({**third, "optimizer": CrashHalfway()}, path)
                except RuntimeError:
                    pass
            if not p2.is_file() or not _same(torch.load(p2, weights_only=True), second):
                raise CheckFailure(f"a crash while overwriting {p2.name} destroyed the checkpoint that was there: "
                                   "the old file must stay whole until the new one is complete")
            listed = [p.name for p in train_mod.checkpoints(run)]
            if listed != [p1.name, p2.name]:
                raise CheckFailure(f"after the crashes the trainer would see the checkpoints {listed}, not "
                                   f"{[p1.name, p2.name]}: a half-written file carries a checkpoint's name, and a "
                                   "resume would pick it")

    return run_check("save_checkpoint_atomically", trial,
                     hint="a crash can come at any byte of the write. Where can the new bytes go so that, until "
                          "the very last moment, the folder still holds the old checkpoint whole, and no file with "
                          "a checkpoint's name (ckpt-NNNNNNNN.pt) is ever incomplete? Which file-system operation "
                          "replaces a name in one step (see the os module)?")


# ---- exercise 3: hours for a number of steps, from a run's log ------------------------------------------------

def hours_for_steps_reference(log_path: str | Path, steps: int, batch_size: int) -> float:
    """Hours that ``steps`` optimizer steps of ``batch_size`` images take at the median images per second of the
    run's ``log.jsonl`` (lines without ``images_per_s``, such as the final summary, are skipped)."""
    lines = [json.loads(s) for s in Path(log_path).read_text().splitlines() if s.strip()]
    speed = statistics.median(h["images_per_s"] for h in lines if "images_per_s" in h)
    return steps * batch_size / speed / 3600


def _write_log(path: Path, rng: random.Random, n_lines: int) -> None:
    base = rng.uniform(50, 5000)
    lines = [{"loss": rng.uniform(0.1, 1), "step": 10 * (i + 1), "lr": 1e-4,
              "images_per_s": base * (0.2 if i == 0 else rng.uniform(0.8, 1.3))} for i in range(n_lines)]
    lines.append({"finished": True, "step": 10 * n_lines, "final": "latent_diffusion.pt"})
    path.write_text("".join(json.dumps(h) + "\n" for h in lines))


def check_hours_for_steps(fn: Callable[[Path, int, int], float], log: str | Path | None = None) -> CheckResult:
    """``fn(log_path, steps, batch_size)`` returns :func:`hours_for_steps_reference`'s number, on made-up logs and
    on ``log`` (a real run's ``log.jsonl``) when given."""

    def trial() -> None:
        rng = random.Random(fresh_seed())
        with tempfile.TemporaryDirectory() as tmp:
            cases = []
            batches = rng.sample([1, 32, 256], 3)  # every batch size once: an answer that ignores it always fails
            for i, n_lines in enumerate((6, 7, 2)):
                path = Path(tmp) / f"log{i}.jsonl"
                _write_log(path, rng, n_lines)
                cases.append((path, batches[i], rng.choice([4_000_000, 400_000, 12_345])))
            if log is not None:
                cases.append((Path(log), 1, 4_000_000))
            for path, batch, steps in cases:
                got = fn(path, steps, batch)
                want = hours_for_steps_reference(path, steps, batch)
                if isinstance(got, torch.Tensor) and got.numel() == 1:
                    got = float(got)
                if not isinstance(got, (int, float)):
                    raise CheckFailure(f"return the hours as a Python number, got {type(got).__name__}")
                if abs(got - want) > 1e-6 * want:
                    lines = len(path.read_text().splitlines())
                    raise CheckFailure(f"{steps:,} steps of batch {batch} with a log of {lines} lines "
                                       f"({'your run' if path == Path(log or '') else 'made up'}): your {got:.6g} "
                                       f"hours, the reference {want:.6g}")

    return run_check("hours_for_steps", trial,
                     hint="the log's speed is in images per second, while the run is counted in optimizer steps "
                          "of batch_size images; take the median over every line that has a speed (the first "
                          "window is slowed by start-up, the last line is a summary), with the usual median of "
                          "an even count; and an hour has 3600 seconds.")
