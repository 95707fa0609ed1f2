"""Checks for chapter 10 (full-scale training: the batch plan, atomic checkpoints, the learning rate after a resume).

The checks compare with the trainer itself (:mod:`fftd_course.train`): its per-GPU micro-batch and data order,
its checkpoint file pattern. The atomic-save check runs the learner's function once per file operation it makes,
crashing the simulated machine at that operation, in temporary folders; all run in well under a second.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .. import data as data_mod
from .. import train as train_mod
from .core import Bugs, CheckFailure, CheckResult, fresh_seed, run_check, yours

__all__ = ["check_training_plan", "check_save_checkpoint_atomically", "check_resumed_lrs"]


# ---- exercise 1: per-GPU micro-batch and optimizer steps per epoch ---------------------------------------------

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
    and raises ``ValueError`` where the trainer refuses the split.

    The micro-batch is what the trainer computes (``micro_batch``; it raises ``ConfigError``, a ``ValueError``,
    when the batch cannot be split evenly); an epoch is one pass of the :class:`~fftd_course.data.EpochSampler`
    over the items the stage trains on (stage 2 with ``hflip``: the latents of every image and of its mirror
    image), each rank taking an equal share and dropping what does not fill a whole micro-batch. Gradient
    accumulation turns ``grad_accum`` micro-batches into one optimizer step, so the count can be fractional.
    """

    def plan(config: train_mod.TrainConfig, n_images: int, gpus: int) -> tuple[int, float]:  # read from the trainer
        micro = train_mod.micro_batch(config, gpus)
        items = n_images * (2 if config.stage == "fftd" and config.hflip else 1)
        per_rank = data_mod.EpochSampler(items, world_size=gpus).num_samples
        return micro, (per_rank // micro) / config.grad_accum

    fn = yours(fn)

    def trial() -> None:
        for config, n, gpus in _plan_cases(fresh_seed()):
            want = plan(config, n, gpus)
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
                          "how many of them does one rank see, and what happens to a last, incomplete micro-batch?",
                     forbid=["fftd_course.training.config.micro_batch", "fftd_course.data.EpochSampler.__init__"])


# ---- exercise 2: find the bug in saving a checkpoint ----------------------------------------------------------

class _Crash(BaseException):
    """The simulated machine stops (a power cut, ``kill -9``): not an ``Exception``, so no ``except`` clause of
    the answer that catches errors can tidy up, and every later file operation raises it again."""


def _where(file: Any) -> str:
    return os.path.abspath(os.fspath(file))


class _WatchedFile:
    """A file opened for writing while the simulated disk runs: each write is one operation."""

    def __init__(self, f: Any, where: str, disk: "_Disk"):
        self._f, self._where, self._disk = f, where, disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_WatchedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def write(self, data: Any) -> int:
        if self._disk.busy:
            return self._f.write(data)
        stop = self._disk.begin(f"a write to {Path(self._where).name}")
        self._disk.dirty.add(self._where)
        if stop:
            self._f.write(bytes(data)[: len(data) // 2])
            self._f.flush()
            self._disk.stop()
        return self._f.write(data)


class _Disk:
    """Counts the file operations of the learner's code (opening a file for writing, writing, ``torch.save``,
    copying, renaming, deleting, ``fsync``) and stops the machine at operation ``crash_at``: a write, a copy or a
    ``torch.save`` stops halfway through its bytes, any other operation before it happens.

    It also keeps which files hold bytes that no ``fsync`` has forced to the disk: renaming such a file into
    place is what a power cut turns into an empty checkpoint (``unsynced``).
    """

    def __init__(self, crash_at: int | None = None):
        self.crash_at, self.ops, self.off, self.busy = crash_at, [], False, 0
        self.fd_paths: dict[int, str] = {}
        self.dirty: set[str] = set()
        self.unsynced: list[tuple[str, str]] = []

    def begin(self, what: str) -> bool:
        """A file operation starts; ``True`` when the machine stops in it."""
        if self.off:
            raise _Crash("the machine is off")
        self.ops.append(what)
        return len(self.ops) - 1 == self.crash_at

    def stop(self) -> None:
        self.off = True
        raise _Crash(f"simulated crash in {self.ops[-1]}")

    @contextmanager
    def quiet(self) -> Iterator[None]:  # our own calls of the real functions are not the answer's operations
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1

    def _file_ops(self, real: dict) -> dict:
        """Stand-ins that open, write and fsync files: each call is one operation that can crash."""
        disk = self

        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            writing = any(c in mode for c in "wax+")
            if disk.busy or not writing:
                return real["open"](file, mode, *args, **kwargs)
            where = disk.fd_paths.get(file, str(file)) if isinstance(file, int) else _where(file)
            stop = disk.begin(f"opening {Path(where).name} for writing")
            f = real["open"](file, mode, *args, **kwargs)
            disk.fd_paths[f.fileno()] = where
            disk.dirty.add(where)
            if stop:  # created (or emptied), nothing written yet
                f.close()
                disk.stop()
            return _WatchedFile(f, where, disk)

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            stop = bool(writing) and not disk.busy and disk.begin(f"opening {Path(path).name} for writing")
            fd = real["os_open"](path, flags, *args, **kwargs)
            disk.fd_paths[fd] = _where(path)
            if writing:
                disk.dirty.add(_where(path))
            if stop:
                os.close(fd)
                disk.stop()
            return fd

        def write(fd: int, data: Any) -> int:
            if disk.busy:
                return real["write"](fd, data)
            where = disk.fd_paths.get(fd, f"file descriptor {fd}")
            stop = disk.begin(f"a write to {Path(where).name}")
            disk.dirty.add(where)
            if stop:
                real["write"](fd, bytes(data)[: len(data) // 2])
                disk.stop()
            return real["write"](fd, data)

        def fsync(fd: Any) -> None:
            if disk.busy:
                return real["fsync"](fd)
            number = fd if isinstance(fd, int) else fd.fileno()
            if disk.begin(f"fsync of {Path(disk.fd_paths.get(number, '?')).name}"):
                disk.stop()
            real["fsync"](fd)
            disk.dirty.discard(disk.fd_paths.get(number, ""))

        return {"open": opened, "os_open": os_open, "write": write, "fsync": fsync}

    def _path_ops(self, real: dict) -> dict:
        """Stand-ins that rename, delete, copy and torch.save: each call is one operation that can crash."""
        disk = self

        def renamer(key: str) -> Callable[..., Any]:
            def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if disk.busy:
                    return real[key](src, dst, *args, **kwargs)
                if disk.begin(f"renaming {Path(src).name} to {Path(dst).name}"):
                    disk.stop()
                if _where(src) in disk.dirty:
                    disk.unsynced.append((Path(src).name, Path(dst).name))
                    disk.dirty.add(_where(dst))
                else:
                    disk.dirty.discard(_where(dst))
                disk.dirty.discard(_where(src))
                return real[key](src, dst, *args, **kwargs)
            return rename

        def deleter(key: str) -> Callable[..., Any]:
            def delete(path: Any, *args: Any, **kwargs: Any) -> Any:
                if disk.busy:
                    return real[key](path, *args, **kwargs)
                if disk.begin(f"deleting {Path(path).name}"):
                    disk.stop()
                return real[key](path, *args, **kwargs)
            return delete

        def copyfile(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if disk.busy:
                return real["copyfile"](src, dst, *args, **kwargs)
            stop = disk.begin(f"copying {Path(src).name} to {Path(dst).name}")
            disk.dirty.add(_where(dst))
            with disk.quiet():
                if stop:
                    data = Path(src).read_bytes()
                    with real["open"](dst, "wb") as f:
                        f.write(data[: len(data) // 2])
                else:
                    return real["copyfile"](src, dst, *args, **kwargs)
            disk.stop()

        def copyfileobj(fsrc: Any, fdst: Any, *args: Any, **kwargs: Any) -> Any:
            if disk.busy:
                return real["copyfileobj"](fsrc, fdst, *args, **kwargs)
            stop = disk.begin("copying between open files")
            with disk.quiet():
                if stop:
                    data = fsrc.read()
                    fdst.write(data[: len(data) // 2])
                else:
                    return real["copyfileobj"](fsrc, fdst, *args, **kwargs)
            disk.stop()

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if disk.busy:
                return real["save"](obj, f, *args, **kwargs)
            to_path = isinstance(f, (str, os.PathLike))
            where = _where(f) if to_path else getattr(f, "_where", "an open file")
            stop = disk.begin(f"torch.save to {Path(where).name}")
            buffer = io.BytesIO()
            with disk.quiet():
                real["save"](obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                data = data[: len(data) // 2] if stop else data
                disk.dirty.add(where)
                if to_path:
                    with real["open"](f, "wb") as out:
                        out.write(data)
                else:
                    f.write(data)
                    if stop:
                        f.flush()
            if stop:
                disk.stop()

        return {"replace": renamer("replace"), "rename": renamer("rename"), "remove": deleter("remove"),
                "unlink": deleter("unlink"), "copyfile": copyfile, "copyfileobj": copyfileobj, "save": save}

    @contextmanager
    def installed(self) -> Iterator["_Disk"]:
        real = {"open": builtins.open, "os_open": os.open, "write": os.write, "replace": os.replace,
                "rename": os.rename, "remove": os.remove, "unlink": os.unlink, "fsync": os.fsync,
                "copyfile": shutil.copyfile, "copyfileobj": shutil.copyfileobj, "save": torch.save}
        ops = {**self._file_ops(real), **self._path_ops(real)}
        patches = [(builtins, "open", ops["open"]), (io, "open", ops["open"]), (os, "open", ops["os_open"]),
                   (os, "write", ops["write"]), (os, "fsync", ops["fsync"]), (os, "replace", ops["replace"]),
                   (os, "rename", ops["rename"]), (os, "remove", ops["remove"]), (os, "unlink", ops["unlink"]),
                   (shutil, "copyfile", ops["copyfile"]), (shutil, "copyfileobj", ops["copyfileobj"]),
                   (torch, "save", ops["save"])]
        originals = [(holder, name, getattr(holder, name)) for holder, name, _ in patches]
        try:
            for holder, name, stand_in in patches:
                setattr(holder, name, stand_in)
            yield self
        finally:
            for holder, name, original in originals:
                setattr(holder, name, original)


def _loads_as(path: Path, want: dict) -> bool:
    try:
        loaded = torch.load(path, weights_only=True)
    except Exception:
        return False
    return (isinstance(loaded, dict) and loaded.get("step") == want["step"]
            and isinstance(loaded.get("weights"), torch.Tensor) and torch.equal(loaded["weights"], want["weights"]))


def check_save_checkpoint_atomically(fn: Callable[[dict, Path], object]) -> CheckResult:
    """``fn(obj, path)`` writes a checkpoint that survives a crash at any moment of the next write.

    The answer runs once to count its file operations, then once per operation with the simulated machine
    stopping there (:class:`_Disk`), over an existing checkpoint and into a new name. After every crash the
    checkpoint must be the complete old one or the complete new one (or absent, for a new name), and every file
    the trainer would list as a checkpoint must load. Bytes renamed into place must have been forced to the
    disk first (``os.fsync``). A find-the-bug exercise with one bug.
    """
    fn = yours(fn)

    def run(obj: dict, path: Path, crash_at: int | None = None) -> _Disk:
        disk = _Disk(crash_at)
        with disk.installed():
            try:
                fn(obj, path)
            except _Crash:
                pass
        return disk

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        old, new = ({"step": s, "weights": torch.randn(256, generator=g)} for s in (2, 3))
        scenarios = {}
        with tempfile.TemporaryDirectory() as tmp:  # a new checkpoint, then one over it: nothing crashes
            folder = Path(tmp) / "checkpoints"
            folder.mkdir()
            path = folder / "ckpt-00000002.pt"
            for scenario, obj in (("new", old), ("overwrite", new)):
                disk = run(obj, path)
                if not path.is_file():
                    raise CheckFailure(f"after saving step {obj['step']} there is no file {path.name}")
                if not _loads_as(path, obj):
                    raise CheckFailure(f"{path.name} does not load back (torch.load, weights_only=True) to what was "
                                       f"saved{' over it' if scenario == 'overwrite' else ''}")
                if disk.unsynced:
                    src, dst = disk.unsynced[0]
                    raise CheckFailure(f"{src} was renamed to {dst} before its bytes were forced to the disk "
                                       "(os.fsync): after a power cut the rename can survive while the bytes do not, "
                                       "and the checkpoint is empty")
                scenarios[scenario] = len(disk.ops)
            extra = sorted(p.name for p in folder.iterdir() if p != path)
            if extra:
                raise CheckFailure(f"after two successful saves the folder also holds {extra}: the file that was "
                                   "written should have become the checkpoint, leaving nothing behind")
        for scenario, count in reversed(scenarios.items()):
            for k in range(count):
                with tempfile.TemporaryDirectory() as tmp:
                    run_dir = Path(tmp)
                    folder = run_dir / "checkpoints"
                    folder.mkdir()
                    kept = folder / "ckpt-00000001.pt"
                    torch.save({"step": 1, "weights": old["weights"]}, kept)
                    path = folder / ("ckpt-00000002.pt" if scenario == "overwrite" else "ckpt-00000003.pt")
                    if scenario == "overwrite":
                        torch.save(old, path)
                    disk = run(new, path, crash_at=k)
                    where = (f"a crash at file operation {k + 1} of {count} ({disk.ops[k] if k < len(disk.ops) else '?'})"
                             f" while {'overwriting' if scenario == 'overwrite' else 'writing the new'} {path.name}")
                    whole = _loads_as(path, new) or (_loads_as(path, old) if scenario == "overwrite" else not path.exists())
                    if not whole:
                        state = "gone" if not path.exists() else "damaged"
                        raise CheckFailure(f"{where} left it {state}: " + (
                            "the old file must stay whole until the new one is complete" if scenario == "overwrite"
                            else "a checkpoint's name must never hold an incomplete file"))
                    broken = [p.name for p in train_mod.checkpoints(run_dir)
                              if not (_loads_as(p, new) or _loads_as(p, old) or _loads_as(p, {"step": 1, "weights": old["weights"]}))]
                    if broken:
                        raise CheckFailure(f"{where} left {broken}, which carry a checkpoint's name but do not load: "
                                           "a resume would pick them")

    return run_check("save_checkpoint_atomically", trial, bugs=Bugs(1, nudges=(
        "a crash can come at any byte of the write: where can the new bytes go so that, until the very last "
        "moment, the folder still holds the old checkpoint whole?",
        "no file with a checkpoint's name (ckpt-NNNNNNNN.pt) may ever be incomplete: which name may the file "
        "you write into carry, and in which folder must it be?",
        "which file-system operation replaces a name in one step (see the os module), and what must be true of "
        "the new bytes on the disk before you use it?")),
        forbid=["fftd_course.checkpoints.atomic_save", "fftd_course.checkpoints.atomic_write"])


# ---- exercise 3: find the bugs in a colleague's learning rate after a resume -------------------------------------

def _lr_case(lr_schedule: str, warmup: int, steps: int, horizon: int, saved_steps: int, step: int,
             n: int, lr: float = 1e-3) -> tuple[train_mod.TrainConfig, dict, int]:
    """(the resuming call's config, the checkpoint it resumes from, how many steps to ask for)."""
    config = train_mod.get_preset("toy32", "fftd").replace(lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup,
                                                           steps=steps)
    saved = config.replace(steps=saved_steps).to_dict()  # the config of the call that wrote the checkpoint
    return config, {"step": step, "schedule_steps": horizon, "config": saved, "world_size": 1}, n


def check_resumed_lrs(fn: Callable[[train_mod.TrainConfig, dict, int], list[float]]) -> CheckResult:
    """``fn(config, ckpt, n)``: the learning rates of the next ``n`` optimizer steps when ``config`` resumes from the
    checkpoint dict ``ckpt``, as :mod:`fftd_course.train` sets them (a find-the-bug exercise with two bugs)."""

    def lrs(config: train_mod.TrainConfig, ckpt: dict, n: int) -> list[float]:  # the hidden reference: the trainer's
        from ..pipeline import cosine_lr  # schedule, from the step and the horizon the checkpoint carries

        start, horizon = int(ckpt["step"]), int(ckpt["schedule_steps"])
        if config.lr_schedule == "cosine":
            factor = cosine_lr(horizon, config.warmup_steps, config.lr_final_factor)
        else:
            factor = lambda k: min(1.0, (k + 1) / config.warmup_steps) if config.warmup_steps else 1.0  # noqa: E731
        return [config.lr * factor(k) for k in range(start, start + n)]

    fn = yours(fn)

    def differs(case: tuple) -> str | None:
        got, want = fn(*case), lrs(*case)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            raise CheckFailure(f"return a list of {len(want)} learning rates (one per step asked for), got "
                               f"{type(got).__name__}{' of ' + str(len(got)) if isinstance(got, (list, tuple)) else ''}")
        for k, (a, b) in enumerate(zip(got, want)):
            if not isinstance(a, (int, float)) or abs(a - b) > 1e-9 * max(abs(b), 1e-12):
                return (f"step {case[1]['step'] + k}: your lr {a:.6g}" if isinstance(a, (int, float)) else
                        f"step {case[1]['step'] + k}: your lr is a {type(a).__name__}") + f", the trainer's {b:.6g}"
        return None

    restart_case = _lr_case("constant", 10, 50, 50, 50, 4, 12)         # mid-warm-up, nothing else changed
    horizon_case = _lr_case("cosine", 0, 200, 100, 100, 0, 200)       # --steps raised from 100 to 200
    remaining = lambda: sum(differs(case) is not None for case in (restart_case, horizon_case))  # noqa: E731

    def trial() -> None:
        rng = random.Random(fresh_seed())
        w = rng.choice([20, 50, 100])
        cases = [
            ("a cosine run resumed during its warm-up", _lr_case("cosine", w, 1000, 1000, 1000, w // 2, 3 * w)),
            ("a constant schedule resumed after its warm-up", _lr_case("constant", w, 500, 500, 500, 2 * w, 10)),
            ("a cosine run resumed with steps raised from 1000 to 1500", _lr_case("cosine", w, 1500, 1000, 1000,
                                                                                   rng.randint(w, 900), 700)),
            ("its second resume, with steps raised again to 2000 (the checkpoint's config says 1500)",
             _lr_case("cosine", w, 2000, 1000, 1500, rng.randint(1000, 1400), 300)),
        ]
        for what, case in cases:
            problem = differs(case)
            if problem:
                raise CheckFailure(f"{what} (warm-up {case[0].warmup_steps}, from step {case[1]['step']}): {problem}")

    return run_check("resumed_lrs", trial, bugs=Bugs(2, nudges=(
        "print the colleague's first few learning rates after resuming at step 300 of a run with a 100-step warm-up: "
        "which step does the schedule think it is at?",
        "the resumed run must be the uninterrupted one: which number in the checkpoint says where the run stands?",
        "raise steps on a resume and read what the trainer prints, and the docstring of fftd_course/training/engine.py: "
        "over how many steps does the cosine run then, and where does the checkpoint keep that number?"),
        remaining=remaining),
        forbid=["fftd_course.pipeline.cosine_lr", "fftd_course.training.stages.base.Stage.lr_factor",
                "fftd_course.training.stages.base.Stage.set_lr"])
