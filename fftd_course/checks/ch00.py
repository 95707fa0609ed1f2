"""Checks for chapter 00 (setup and tour): images shared by two sets, image bytes, data-set statistics in one pass."""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import torch

from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def _count(got: object, what: str) -> int:
    """``got`` as a whole number (an int or a one-element integer tensor), or a readable failure."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got)
    if isinstance(got, bool) or not isinstance(got, int):
        raise CheckFailure(f"{what}: expected a whole number (an int), got {type(got).__name__} {got!r}")
    return got


def check_count_shared(fn: Callable[[torch.Tensor, torch.Tensor], int]) -> CheckResult:
    """``fn(a, b)``: how many images of ``b`` (each counted once, duplicates in ``b`` each count) equal an image of ``a``.

    Two images are equal when all their ``C * H * W`` values are. The trials plant exact copies at other
    positions, a copy with its pixels shuffled (same sum, same values), a copy one value off, duplicates in
    ``a`` and in ``b``, and sets of different lengths.
    """

    def shared(a: torch.Tensor, b: torch.Tensor) -> int:  # the hidden reference: compare every pair
        return sum(any(torch.equal(x, y) for y in a) for x in b)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        def draw(*shape: int) -> torch.Tensor:  # 8-bit values: sums are exact in any order, as a shuffle keeps them
            return torch.randint(0, 256, shape, generator=g) / 128 - 1

        for n_a, shape in [(7, (3, 4, 4)), (5, (1, 3, 2)), (9, (3, 2, 5))]:
            a = draw(n_a, *shape)
            a[-1] = a[-2]  # a holds a duplicate: an image of b that matches both still counts once
            pick = torch.randperm(n_a - 1, generator=g)
            shuffled = a[pick[2]].flatten()[torch.randperm(a[0].numel(), generator=g)].view(shape)
            nudged = a[pick[3]].clone()
            nudged.view(-1)[0] += 1 / 128 if nudged.view(-1)[0] < 0.99 else -1 / 128
            parts = [a[pick[0]], a[pick[0]], a[pick[1]], a[-1], shuffled, nudged,
                     *draw(3, *shape)]
            b = torch.stack(parts)[torch.randperm(len(parts), generator=g)]
            for x, y, what in [(a, b, "a and b"), (b, a, "the two sets swapped"), (a, b[:0], "an empty b"),
                               (a[: n_a - 2], a[: n_a - 2].flip(0), "a set and itself, reversed")]:
                got = _count(fn(x.clone(), y.clone()), f"count_shared of {what}")
                want = shared(x, y)
                if got != want:
                    raise CheckFailure(f"count_shared of {what} ({len(x)} and {len(y)} images of shape {shape}): "
                                       f"{got}, expected {want}")

    return run_check("count_shared", trial,
                     hint="two images are the same when ALL their C*H*W values are equal, wherever they sit in "
                          "their sets: not the same sum, not the same position. Count each image of b once, "
                          "however many images of a it matches. (A Python set of tensors compares identities.)",
                     # torch's own duplicate finders would do the comparing for you
                     forbid=["torch.unique", "torch.Tensor.unique", "torch.unique_consecutive"])


def check_channel_stats(fn: Callable[[Iterable[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]) -> CheckResult:
    """``fn(batches)``: per-channel mean and (population) std of every pixel of every ``(B, C, H, W)`` batch, in one pass.

    The batches come from a generator (read once), have different sizes (the last is short) and different
    means, and the check fails an answer that keeps them all in memory at once.
    """

    def stats(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # the hidden reference
        x = torch.cat(batches).double()
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for sizes, c, hw in [([4, 4, 4, 1], 3, (2, 3)), ([3, 5, 2], 2, (3, 3)), ([6], 4, (1, 2)),
                             ([2, 2, 2, 2, 2, 2, 2, 1], 3, (2, 2))]:
            # channels with their own offsets and scales, and every batch shifted: the batches differ
            batches = [(torch.randn(n, c, *hw, generator=g) * (1 + torch.arange(c)).view(1, -1, 1, 1)
                        + 3 * torch.arange(c).view(1, -1, 1, 1) + 2 * torch.rand(1, generator=g)) for n in sizes]
            alive = []

            def stream():
                for batch in batches:
                    copy = batch.clone()
                    alive.append(weakref.ref(copy))
                    yield copy
                    del copy
                held = sum(r() is not None for r in alive)
                if held > 2:
                    raise CheckFailure(f"your code held {held} of the {len(batches)} batches in memory at once: a "
                                       "real data set does not fit, so keep running totals and let each batch go")

            got = fn(stream())
            if not (isinstance(got, (tuple, list)) and len(got) == 2):
                raise CheckFailure(f"expected a pair (mean, std) of tensors, got {type(got).__name__}")
            want = stats(batches)
            what = f"{len(sizes)} batches of {sizes} images with {c} channels of {hw[0]}x{hw[1]} pixels"
            compare(got[0], want[0].float(), f"the mean of {what}", atol=1e-4)
            compare(got[1], want[1].float(), f"the std of {what}", atol=1e-4)

    return run_check("channel_stats", trial,
                     hint="a batch's own mean and std cannot be averaged: batches differ in size, and the spread "
                          "BETWEEN batch means is part of the whole set's variance. Which running totals per "
                          "channel give the mean and the mean of squares of everything seen so far? And the std of "
                          "a whole data set divides by N, not N - 1.",
                     # the package's statistics of a whole set (latents, FID features), and torch's batch statistics
                     forbid=["fftd_course.pipeline.latent_scale", "fftd_course.evaluation.metrics.FeatureStats.from_features",
                             "torch.nn.functional.batch_norm", "torch.batch_norm"])


def check_to_pixels(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(x)``: ``(C, H, W)`` in [-1, 1] to ``(H, W, C)`` uint8, -1 -> 0, 1 -> 255, rounded to the nearest integer.

    A find-the-bug exercise with two bugs, each with its own sub-test: where the numbers sit (a 3-channel image
    whose scaled values round and truncate alike) and which byte a value becomes (a 1-channel image, which
    every layout reads alike).
    """

    def to_pixels(x: torch.Tensor) -> torch.Tensor:  # the hidden reference
        return ((x + 1) * 127.5).round().permute(1, 2, 0).to(torch.uint8)

    fn = yours(fn)

    def agrees(x: torch.Tensor) -> bool:
        try:
            got = fn(x.clone())
            return isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and torch.equal(got, to_pixels(x))
        except Exception:
            return False

    def remaining() -> int:
        g = torch.Generator().manual_seed(fresh_seed())
        layout = (torch.randint(0, 255, (3, 4, 5), generator=g) + 0.25) / 127.5 - 1  # k + 0.25: rounds down anyway
        values = (torch.randint(0, 255, (1, 4, 5), generator=g) + 0.75) / 127.5 - 1  # k + 0.75: rounds up
        return int(not agrees(layout)) + int(not agrees(values))

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(3, 4, 5), (3, 8, 8), (1, 3, 2)]:
            x = torch.rand(shape, generator=g) * 2 - 1
            x.view(-1)[:3] = torch.tensor([-1.0, 1.0, 0.0])[: x.numel()]
            got = fn(x.clone())
            if isinstance(got, torch.Tensor) and got.dtype != torch.uint8:
                raise CheckFailure(f"the result must be bytes (torch.uint8), got {got.dtype}")
            compare(got, to_pixels(x), f"to_pixels of a {shape} image", atol=0, rtol=0)

    return run_check("to_pixels", trial, bugs=Bugs(2, nudges=(
        "compare the first row of your picture with the first row of the image: is every pixel's colour made "
        "of that same pixel's three channels?",
        "follow one value that is not a whole number after scaling to the byte it becomes: is that the NEAREST "
        "integer?",
        "a tensor method can move numbers to new places, or only read the same memory with a new shape. Which "
        "of the two does the (H, W, C) layout need?",
        "read the exercise's sentence about rounding again, then what the conversion to an integer dtype does "
        "with the fractional part."), remaining=remaining),
        # the package's own byte conversions: Inception's input (bytes, then rescaled) and the toy-set export
        forbid=["fftd_course.evaluation.metrics.inception_inputs", "fftd_course.data.export_toy_faces"])
