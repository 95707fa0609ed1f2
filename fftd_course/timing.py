"""Timing for the chapters' measurements, so that no chapter cell handles clocks or CUDA synchronisation itself.

* :func:`best_time`: the best of several timed calls after a warm-up (the least disturbed measurement of a
  short operation, e.g. one attention forward pass);
* :class:`Stopwatch`: ``with Stopwatch() as clock: ...`` then ``clock.seconds`` (a training run).

On CUDA both synchronise the device before reading the clock, since kernels run asynchronously. The chapter's
own clock is :func:`fftd_course.setup_chapter` / :func:`fftd_course.chapter_seconds`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["best_time", "Stopwatch"]


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int = 5, device: torch.device | str | None = None) -> float:
    """Seconds taken by the fastest of ``repeats`` calls of ``fn()``, after one untimed warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class Stopwatch:
    """``with Stopwatch(device) as clock: work()``; afterwards ``clock.seconds`` holds the elapsed time."""

    def __init__(self, device: torch.device | str | None = None):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Stopwatch":
        _sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self._start
