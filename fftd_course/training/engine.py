"""The training engine: one loop for every stage, from a CPU smoke run to several GPUs.

:func:`train` reads top to bottom: open the run folder (a lock, no stale temporary files), build the stage
(:data:`~fftd_course.training.registry.STAGES`), resume or start, then step, log, preview and checkpoint
until ``config.steps``. The rules it keeps:

* **nothing non-finite is saved**: every step's losses are checked on the device as they come (no host
  read); the host reads that check at log lines and before every checkpoint. The error names the first bad
  step and term and the newest good checkpoint, which pruning never deletes (it only ever removes older
  good ones, since no other kind is written);
* **exact resume**: model, EMA, optimizers, step, every RNG state and the position in the data order; a
  resume refuses changed settings, a changed upstream model or data folder (:meth:`Stage.fingerprint`) and a
  different number of processes. ``--steps`` may change: a cosine schedule keeps the horizon it started
  with (it ended at ``lr_final_factor``; later steps stay there) and says so;
* **branches**: resuming from an older checkpoint moves the later ones aside
  (:func:`~fftd_course.checkpoints.start_branch`) and cuts ``log.jsonl`` at the resume step;
* **signals**: SIGINT/SIGTERM finish the step, log it, checkpoint and return ``status="interrupted"``
  (the command line then exits 130/143, never 0);
* **DDP**: rank 0 writes; the logged losses are the mean over ranks; a non-finite loss on any rank stops
  every rank at the same step with the same message.

The run folder ``out``: ``config.yaml``, ``log.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/ckpt-00001000.pt``,
``images/``, ``run.lock`` and at the end the stage's result (``Stage.final_file``).
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import checkpoints as ck
from ..losses import NonFiniteLossError
from .config import TrainConfig
from .distributed import Dist, all_reduce, checksum, gather, init_distributed, rng_state, set_rng_state
from .registry import STAGES

__all__ = ["train", "TrainResult", "TRAIN_FORMAT", "RESUMABLE_CHANGES"]

TRAIN_FORMAT = "fftd_course.train/1"
# Settings a resumed run may change; any other difference means another run (another model or data).
RESUMABLE_CHANGES = {"steps", "log_every", "sample_every", "ckpt_every", "keep_checkpoints", "num_workers", "compile",
                     "device", "precision", "out", "sample_steps", "guidance_scale"}
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the final file, the last step, how it ended and the log."""

    out: Path
    final: Path | None
    step: int
    status: str  # "finished", "interrupted" (a signal) or "stopped" (stop_after)
    history: list[dict]
    seconds: float
    signal: int | None = None  # the signal that interrupted the run

    @property
    def exit_code(self) -> int:
        """0 when finished or stopped on purpose; 128 + the signal's number when a signal interrupted it."""
        return SIGNAL_EXIT.get(self.signal, 128 + int(self.signal)) if self.signal else 0


def train(config: TrainConfig, *, resume: str | Path | bool = True, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or resume) the training ``config`` describes; see the module docstring for what it writes.

    ``resume=True`` continues from the latest complete checkpoint in ``config.out`` if there is one;
    a path resumes from that checkpoint file (later checkpoints start an abandoned branch); ``False`` refuses
    to start in a folder that holds checkpoints. ``stop_after`` ends the loop after that many steps of this
    call (with a checkpoint), as a signal would.
    """
    d, device = init_distributed(config)
    started = time.perf_counter()
    with _RunFolder(Path(config.out), d):
        stage = STAGES[config.stage](config, d, device, progress)
        run = _Run(stage, d, device)
        run.begin(resume)
        batches = stage.batches()
        if run.fresh:
            stage.prepare(batches)
        stage.wrap()
        config = stage.config
        status, caught = "finished", None
        with _Stop() as stop, run.progress_bar(progress) as bar:
            while stage.step < config.steps:
                lr = stage.set_lr(stage.step, run.horizon)
                run.window.add(stage.train_step([next(batches) for _ in range(config.grad_accum)], stage.step),
                               stage.step)
                stage.step += 1
                bar.update(1)
                last = stage.step == config.steps
                log_now = stage.step % config.log_every == 0 or last
                stopping = run.stopping(stop, stop_after, log_now)
                if log_now or stopping:
                    run.log(lr, bar)
                if config.sample_every and stage.step % config.sample_every == 0 and not last:
                    run.write_images()
                if (config.ckpt_every and stage.step % config.ckpt_every == 0) or last or stopping:
                    run.save()
                if stopping and not last:
                    status, caught = ("interrupted", stop.signal) if stop.requested else ("stopped", None)
                    break
        final = run.finish() if status == "finished" else None
        run.close()
    return TrainResult(stage.out, final, stage.step, status, run.history, time.perf_counter() - started, caught)


class _RunFolder:
    """The run folder for the length of a run: rank 0 holds its lock and clears stale temporary files."""

    def __init__(self, out: Path, d: Dist):
        self.out, self.d = out, d
        self.lock = ck.RunLock(out) if d.main else None

    def __enter__(self) -> "_RunFolder":
        if self.lock is not None:
            self.lock.acquire()
            for folder in (self.out, self.out / "checkpoints"):
                ck.clean_temp_files(folder)
        self.d.barrier()
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()


class _Window:
    """Logged terms summed on the device since the last log line, and the first step each went non-finite.

    One stacked tensor for all terms: a step adds a handful of small device operations and reads nothing.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.sums = torch.zeros(0)
        self.first_bad = torch.zeros(0)
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor], step: int) -> None:
        keys = list(logs)
        v = torch.stack([logs[k].detach().float().reshape(()) for k in keys])
        bad = torch.where(torch.isfinite(v), math.inf, float(step))
        if self.steps and keys != self.keys:  # the means of a log line need one set of terms
            raise ValueError(f"a stage must log the same terms every step: {self.keys} then {keys}")
        if self.steps:
            self.sums, self.first_bad = self.sums + v, torch.minimum(self.first_bad, bad)
        else:
            self.keys, self.sums, self.first_bad = keys, v, bad
        self.steps += 1

    def reset(self) -> None:
        self.__init__()


class _Run:
    """The engine's bookkeeping around one stage: resume, log, checkpoints, images, the final file."""

    def __init__(self, stage, d: Dist, device: torch.device):
        self.stage, self.d, self.device = stage, d, device
        self.config: TrainConfig = stage.config
        self.out: Path = stage.out
        self.log_path = self.out / "log.jsonl"
        self.history: list[dict] = []
        self.window = _Window()
        self.horizon = self.config.steps  # the cosine schedule's length (kept from the run's start on resume)
        self.fresh = True
        self.writer = None

    # ---- starting -------------------------------------------------------------------------------------------
    def begin(self, resume: str | Path | bool) -> None:
        path = self._resume_path(resume)
        if path is None:
            torch.manual_seed(self.config.seed + self.d.rank)
            random.seed(self.config.seed + self.d.rank)
            if self.d.main:
                self.log_path.unlink(missing_ok=True)
        else:
            self._restore(path)
        self.stage.data_order.set_position(self.stage.position["epoch"], self.stage.position["index"])
        self.started_at = self.stage.step
        if self.d.main:
            import yaml
            from torch.utils.tensorboard import SummaryWriter

            (self.out / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.stage.step)
        self.window.reset()

    def _resume_path(self, resume: str | Path | bool) -> Path | None:
        latest = ck.latest_checkpoint(self.out)
        if resume is True:
            return latest
        if resume:
            path = Path(resume)
            if not path.is_file():
                raise FileNotFoundError(f"no checkpoint at {path}" + (": it is a folder" if path.is_dir() else ""))
            return path
        if latest is not None:
            raise ck.CheckpointError(f"{self.out} already holds checkpoints; resume it (the default) or choose "
                                     "another out folder")
        return None

    def _restore(self, path: Path) -> None:
        ckpt = ck.load(path, TRAIN_FORMAT, "training checkpoint",
                       remedy="resume from another checkpoint of the run, or start a new out folder")
        _check_resumable(ckpt, path, self.config, self.stage, self.d)
        stage = self.stage
        try:
            stage.load_state(ckpt["state"])
            for name, opt in stage.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ck.CheckpointError(f"{path} does not fit this model ({type(e).__name__}: {e})") from None
        stage.step = int(ckpt["step"])
        mine = ckpt["ranks"][self.d.rank]
        stage.position = dict(mine["position"])
        stage.flip_gen.set_state(mine["flip"])
        set_rng_state(mine["rng"], self.device)
        self.horizon = int(ckpt.get("schedule_steps", ckpt["config"]["steps"]))
        self._announce(path, ckpt)
        self.fresh = False

    def _announce(self, path: Path, ckpt: dict) -> None:
        step, c = self.stage.step, self.config
        if c.steps < step:
            raise ck.CheckpointError(f"{path} is at step {step}, past steps={c.steps}: raise --steps, or resume from "
                                     "an earlier checkpoint")
        if not self.d.main:
            return
        moved = ck.start_branch(self.out, step)
        if self.log_path.is_file():  # cut the log at the checkpoint: the steps after it are about to be redone
            lines = [json.loads(s) for s in self.log_path.read_text().splitlines() if s.strip()]
            self.history = [h for h in lines if "finished" not in h and h.get("step", -1) <= step]
            self.log_path.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        print(f"resuming {self.out} from {path.name} (step {step})", flush=True)
        if moved is not None:
            print(f"  the later checkpoints of the abandoned branch are in {moved}", flush=True)
        if c.lr_schedule == "cosine" and c.steps != self.horizon:
            print(f"  steps changed from {self.horizon} to {c.steps}: the cosine schedule keeps its {self.horizon}-step "
                  f"horizon (from step {self.horizon} on, lr stays at lr_final_factor x lr = "
                  f"{c.lr * c.lr_final_factor:.3g}); start a new out folder for a new schedule", flush=True)

    # ---- the loop -------------------------------------------------------------------------------------------
    def progress_bar(self, progress: bool):
        return tqdm(total=self.config.steps, initial=self.stage.step, desc=f"training {self.config.stage}",
                    disable=not (progress and self.d.main), unit="step")

    def stopping(self, stop: "_Stop", stop_after: int | None, log_now: bool) -> bool:
        """Stop now? ``stop_after`` steps of this call, or a signal (under DDP agreed on at log steps only)."""
        if stop_after is not None and self.stage.step - self.started_at >= stop_after:
            return True
        if not self.d.on:
            return stop.requested
        if not log_now:
            return False
        flag = all_reduce(torch.tensor([float(stop.requested)], device=self.device), self.d, "max")
        stop.requested = bool(flag.item())
        return stop.requested

    def raise_if_not_finite(self) -> None:
        """One host read of the window's first non-finite steps (over every rank); raises naming the first."""
        w = self.window
        if not w.steps:
            return
        first = all_reduce(w.first_bad.clone(), self.d, "min").tolist()
        bad = [(s, k) for s, k in zip(first, w.keys) if math.isfinite(s)]
        if bad:
            step, term = min(bad)
            raise NonFiniteLossError(
                f"step {int(step)}: the loss term '{term}' is not finite{' on some process' if self.d.on else ''}. "
                f"Nothing from that step on was saved; the newest good checkpoint is "
                f"{ck.latest_checkpoint(self.out) or 'none (no checkpoint was written yet)'}: resume from it with a "
                "lower lr, or check the data", step=int(step), term=term)

    def log(self, lr: float, bar) -> None:
        """A log line: the window's means over its steps and every rank, after the finite check."""
        self.raise_if_not_finite()
        w, step = self.window, self.stage.step
        means = all_reduce(w.sums.clone(), self.d, "sum") / (self.d.world * max(w.steps, 1))
        values = dict(zip(w.keys, means.tolist()))
        seconds = time.perf_counter() - w.started
        values.update(step=step, lr=lr, images_per_s=w.steps * self.config.batch_size / max(seconds, 1e-9))
        self.history.append(values)
        if self.d.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(values) + "\n")
            for k, v in values.items():
                if k != "step":
                    self.writer.add_scalar(f"{self.config.stage}/{k}", v, step)
            key = self.stage.log_key
            bar.set_postfix({key: f"{values.get(key, float('nan')):.4f}", "img/s": f"{values['images_per_s']:.0f}"})
        w.reset()

    def save(self) -> None:
        """A checkpoint of this step, only once its losses and weights are known to be finite; prunes older ones."""
        stage, step = self.stage, self.stage.step
        self.raise_if_not_finite()
        ranks = gather({"position": dict(stage.position), "flip": stage.flip_gen.get_state(),
                        "rng": rng_state(self.device), "checksum": checksum(stage.model)}, self.d)
        sums = [r["checksum"] for r in ranks]
        if not all(math.isfinite(s) for s in sums):
            raise NonFiniteLossError(f"step {step - 1}: the model's weights are not finite although its losses were; "
                                     f"nothing was saved; the newest good checkpoint is {ck.latest_checkpoint(self.out)}",
                                     step=step - 1, term="weights")
        if self.d.main:
            if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
                warnings.warn(f"step {step}: the GPUs' model copies differ (parameter sums {sums})")
            ckpt = {"format": TRAIN_FORMAT, "stage": self.config.stage, "config": self.config.to_dict(), "step": step,
                    "world_size": self.d.world, "schedule_steps": self.horizon, "fingerprint": stage.fingerprint(),
                    "state": stage.state(), "optimizers": {k: o.state_dict() for k, o in stage.optimizers.items()},
                    "ranks": [{k: r[k] for k in ("position", "flip", "rng")} for r in ranks],
                    "replica_checksums": sums, "torch": str(torch.__version__)}
            ck.atomic_save(ckpt, ck.checkpoint_path(self.out, step))
            for old in ck.list_checkpoints(self.out)[:-self.config.keep_checkpoints]:
                old.unlink()
        self.d.barrier()

    def write_images(self) -> None:
        if not self.d.main:
            return
        from torchvision.utils import make_grid, save_image

        (self.out / "images").mkdir(exist_ok=True)
        for name, images in self.stage.images().items():
            grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=8)
            self.writer.add_image(name, grid, self.stage.step)
            save_image(grid, self.out / "images" / f"{name}-{self.stage.step:08d}.png")

    def finish(self) -> Path | None:
        self.write_images()
        final = None
        if self.d.main:
            final = self.stage.finish()
            summary = {"finished": True, "step": self.stage.step, "final": str(final), **self.stage.summary()}
            with open(self.log_path, "a") as f:
                f.write(json.dumps(summary) + "\n")
        self.d.barrier()
        return final

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_resumable(ckpt: dict, path: Path, config: TrainConfig, stage, d: Dist) -> None:
    """Refuse a checkpoint of another stage, other settings, other inputs or another number of processes."""
    saved = ckpt.get("config", {})
    if saved.get("stage") != config.stage:
        raise ck.CheckpointError(f"{path} is a {saved.get('stage')} checkpoint; this run trains {config.stage}: "
                                 "use another out folder")
    now = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
             if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diffs:
        raise ck.CheckpointError(f"{path} was written by a run with other settings ({'; '.join(diffs)}); use the "
                                 "same settings to resume, or another out folder for a new run")
    before, after = ckpt.get("fingerprint", {}), stage.fingerprint()
    changed = [f"{k}: checkpoint {before[k]}, now {after.get(k)}" for k in before if before[k] != after.get(k)]
    if changed:
        raise ck.CheckpointError(f"{path}: the run's inputs changed since this checkpoint ({'; '.join(changed)}); "
                                 "resuming would train on other data than the checkpoint's position means. Restore "
                                 "them, or start a new out folder")
    if ckpt["world_size"] != d.world:
        raise ck.CheckpointError(f"{path} was written by {ckpt['world_size']} processes, this run has {d.world}: the "
                                 "data order and random streams cannot continue exactly; resume with the same count")


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and returns (a second one stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None
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
        self.requested, self.signal = True, signum
        print(f"\n{signal.Signals(signum).name}: writing a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
