"""Checks for chapter 00 (setup and tour): image ranges, per-channel standardisation, image bytes."""

from __future__ import annotations

from typing import Callable

import torch

from .core import Bugs, CheckFailure, CheckResult, compare, fresh_seed, run_check, yours


def check_to_unit_range(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn`` maps images from [-1, 1] to [0, 1] like :func:`fftd_course.viz.to_unit_range`."""
    from ..viz import to_unit_range

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(3, 8, 8), (2, 3, 5, 7), (4, 1, 16, 16)]:
            x = torch.rand(shape, generator=g) * 2 - 1
            compare(fn(x), to_unit_range(x), f"to_unit_range on a {shape} batch")
        corners = torch.tensor([-1.0, 0.0, 1.0])
        compare(fn(corners), torch.tensor([0.0, 0.5, 1.0]), "to_unit_range of [-1, 0, 1]")

    return run_check("to_unit_range", trial, hint="-1 must become 0 and 1 must stay 1: two numbers fix an affine map; which shift and which scale?",
                     forbid=["fftd_course.viz.to_unit_range"])


def check_standardize_channels(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(images)`` gives every channel of a ``(B, C, H, W)`` batch mean 0 and (population) std 1 over ``(B, H, W)``."""

    def standardize(x: torch.Tensor) -> torch.Tensor:  # the hidden reference
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) / x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)

    fn = yours(fn)

    def trial() -> None:
        g = torch.Generator().manual_seed(fresh_seed())
        for shape in [(8, 3, 4, 4), (2, 3, 3, 2), (5, 4, 2, 3), (1, 2, 3, 3)]:
            # channels with different offsets and scales, so that a statistic over the wrong axes shows
            x = torch.randn(shape, generator=g) * (1 + torch.arange(shape[1])).view(1, -1, 1, 1) \
                + 3 * torch.arange(shape[1]).view(1, -1, 1, 1)
            compare(fn(x.clone()), standardize(x), f"standardize_channels of a {shape} batch")

    return run_check("standardize_channels", trial,
                     hint="one mean and one standard deviation per CHANNEL, each over the batch and every pixel; "
                          "the formula's s_c divides by B*H*W, not B*H*W - 1 (small batches show the difference).",
                     # the package's per-channel scale of the latents (E16), and torch's batch statistics
                     forbid=["fftd_course.pipeline.latent_scale", "torch.nn.functional.batch_norm", "torch.batch_norm"])


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
