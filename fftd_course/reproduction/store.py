"""The reproduction's cache: every trained model, sample set and (table, row, seed) result, one file each.

A file is written atomically (a stopped run leaves no half file) and computed once: two worker processes that
need the same model take turns through a lock file, the second reads what the first wrote. A damaged file is
computed again. Nothing here is committed; ``docs/reproduction/table_N.json`` is built from it.
"""

from __future__ import annotations

import fcntl
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..checkpoints import atomic_save, atomic_write, load

__all__ = ["Store", "write_json", "read_json"]

FORMAT = "fftd_course.reproduction/1"


def write_json(data: Any, path: Path) -> Path:
    """Write ``data`` as indented JSON atomically (``checkpoints.atomic_write``: never a half-written file)."""
    return atomic_write(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


class Store:
    """Files under ``root``: ``get(name, compute)`` returns the stored value or computes, stores and returns it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another worker computes the same file
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self, path: Path) -> Any | None:
        if not path.is_file():
            return None
        try:
            return read_json(path) if path.suffix == ".json" else load(path, FORMAT, "reproduction cache file")
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            warnings.warn(f"{path} cannot be read ({e}); computing it again", stacklevel=3)
            return None

    def get(self, name: str, compute: Callable[[], Any]) -> Any:
        """The value stored as ``name`` (``.json``: a JSON document; ``.pt``: a dict of tensors), else ``compute()``."""
        path = self.root / name
        value = self._read(path)
        if value is not None:
            return value
        with self._locked(path):
            value = self._read(path)
            if value is None:
                value = compute()
                if path.suffix == ".json":
                    write_json(value, path)
                else:
                    atomic_save({**value, "format": FORMAT}, path)
        return value

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()
