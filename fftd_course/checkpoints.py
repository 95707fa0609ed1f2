"""Files that hold work: one error class, one loader, one atomic writer, the run folder's lock and branches.

Every file the course writes that someone may resume or sample from goes through :func:`atomic_save`
(a temporary file in the same folder, fsync, rename: a reader never sees half a file, a crash leaves
the old file in place) and every such file is read by :func:`load` (``torch.load(weights_only=True)``;
a damaged, foreign or wrong-stage file is a :class:`CheckpointError` that says what to do, never an
``IndexError`` from deep inside pickle). The trainer's run folders add two rules:

* :class:`RunLock`: one trainer per run folder. A second one is refused with the holder's pid. The lock
  is an ``fcntl`` lock, so a killed trainer (SIGKILL, a crash) releases it with its process.
* :func:`start_branch`: resuming from an older checkpoint starts a new branch of the run. The later
  checkpoints of the abandoned branch are moved to ``checkpoints/abandoned-<step>-<time>/``, so a plain
  rerun resumes the new branch, not the stale one, and nothing is deleted.
"""

from __future__ import annotations

import os
import pickle
import re
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["CheckpointError", "RunLockedError", "atomic_save", "atomic_write", "clean_temp_files", "load", "list_checkpoints",
           "latest_checkpoint", "checkpoint_path", "RunLock", "start_branch", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"
CKPT_NAME = re.compile(r"ckpt-(\d{8})\.pt")


class CheckpointError(ValueError):
    """A checkpoint is damaged, of another format or stage, or from a run with other settings."""


class RunLockedError(CheckpointError):
    """Another trainer holds the run folder."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    The temporary file is removed when the write fails (a full disk, Ctrl-C); the old ``path``, if any,
    stays as it was until the rename.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, fsync, rename over ``path`` (see :func:`atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    return path


def clean_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files that interrupted writes left in ``folder`` (call it holding the run's lock)."""
    folder = Path(folder)
    found = sorted(folder.glob(f"{TEMP_PREFIX}*")) if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def load(path: str | Path, fmt: str | tuple[str, ...], what: str, *, remedy: str = "") -> dict:
    """The dict in ``path`` (CPU tensors, ``weights_only=True``) whose ``"format"`` tag is ``fmt`` (or one of them).

    ``what`` names the file for messages ("training checkpoint", "stage-1 model"...), ``remedy`` says what
    to do about a bad one. A missing file is ``FileNotFoundError``; anything else wrong a :class:`CheckpointError`.
    """
    path = Path(path)
    remedy = remedy or f"remake the {what}"
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}" + (": it is a folder" if path.is_dir() else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds on a damaged or foreign file (IndexError on text...)
        kind = type(e).__name__ if isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) else "unreadable"
        raise CheckpointError(f"{path} is damaged or not a PyTorch file ({kind}: {str(e)[:200]}); {remedy}") from None
    fmts = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if not isinstance(obj, dict) or found not in fmts:
        raise CheckpointError(f"{path} is not a {what} (format {found!r}, expected {' or '.join(map(repr, fmts))}); "
                              f"{remedy}")
    return obj


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints ``checkpoints/ckpt-NNNNNNNN.pt`` of a run, oldest first (temporary files never match)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_NAME.fullmatch(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def step_of(path: str | Path) -> int:
    m = CKPT_NAME.fullmatch(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path}: a training checkpoint is named ckpt-NNNNNNNN.pt (8 digits: its step)")
    return int(m.group(1))


def start_branch(run_dir: str | Path, step: int) -> Path | None:
    """Resuming ``run_dir`` at ``step``: move its checkpoints of later steps aside; returns their new folder.

    They belong to the branch being abandoned: left in place, the next plain rerun would resume from them.
    """
    later = [p for p in list_checkpoints(run_dir) if step_of(p) > step]
    if not later:
        return None
    aside = Path(run_dir) / "checkpoints" / f"abandoned-after-{step:08d}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for p in later:
        os.replace(p, aside / p.name)
    return aside


class RunLock:
    """An exclusive lock on a run folder (``run.lock``, holding the pid); a second trainer gets :class:`RunLockedError`.

    ``fcntl.flock``: the operating system releases it when the process ends, however it ends. On systems
    without ``fcntl`` (Windows) the lock is a no-op.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "run.lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by another trainer (pid {holder}); wait for it to "
                                 "finish or stop it, or choose another out folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
