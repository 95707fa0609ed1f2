"""The machinery behind every exercise check cell.

A check runs the learner's code against the package's reference on fresh random inputs (several
shapes, new seeds each call) and prints one of three verdicts:

* ``PASS``: the learner's code matches the reference everywhere it was tried;
* ``FAIL``: with what differed (shape, value, gradient), on which input, and a hint;
* ``not attempted yet``: the code still raises ``NotImplementedError`` (the stub of a student notebook).

A failed check does not raise in a learner's notebook, so "Run All" reaches the end. When the
environment variable ``FFTD_STRICT_CHECKS=1`` is set (``make test`` sets it) a FAIL raises
:class:`ExerciseFailed`, so a wrong answer in ``solutions/`` fails the test run. "Not attempted" never
raises: student notebooks are tested with their stubs in place. ``FFTD_GRADING=1`` (for nbgrader's
``autograde``, which counts a test cell as passed when it does not raise) makes every verdict but PASS
raise, "not attempted" included. ``python -m fftd_course.course.assignments grade`` reads verdicts instead.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["CheckResult", "CheckFailure", "ExerciseFailed", "run_check", "fresh_seed", "compare", "load_reference_weights",
           "strict", "grading", "lenient"]

STRICT_ENV = "FFTD_STRICT_CHECKS"
GRADING_ENV = "FFTD_GRADING"


class CheckFailure(AssertionError):
    """Raised inside a check's trial when the learner's answer differs from the reference."""


class ExerciseFailed(AssertionError):
    """Raised by a check in strict mode (``FFTD_STRICT_CHECKS=1``) when the answer is wrong."""


_lenient_depth = 0


def strict() -> bool:
    """Whether failed checks raise (the test run) or only print (a learner's notebook)."""
    return os.environ.get(STRICT_ENV) == "1" and _lenient_depth == 0


@contextmanager
def lenient() -> Iterator[None]:
    """Never raise on a FAIL inside this block: for showing on purpose what a failing check prints."""
    global _lenient_depth
    _lenient_depth += 1
    try:
        yield
    finally:
        _lenient_depth -= 1


@dataclass
class CheckResult:
    """The verdict of one check: ``status`` is ``"pass"``, ``"fail"`` or ``"not attempted"``."""

    name: str
    status: str
    message: str = ""

    def __bool__(self) -> bool:
        return self.status == "pass"

    def _ipython_display_(self) -> None:
        # The check already printed its verdict; showing the return value again would repeat it.
        pass


def grading() -> bool:
    """Whether every verdict but PASS raises (``FFTD_GRADING=1``: nbgrader's autograde scores raising cells 0)."""
    return os.environ.get(GRADING_ENV) == "1" and _lenient_depth == 0


def fresh_seed() -> int:
    """A new seed from the operating system, so every run of a check tries new inputs."""
    return random.SystemRandom().randrange(2**31)


def run_check(name: str, trial: Callable[[], None], hint: str = "") -> CheckResult:
    """Run ``trial`` (which raises :class:`CheckFailure` on a mismatch) and report the verdict."""
    try:
        trial()
    except NotImplementedError:
        result = CheckResult(name, "not attempted", "replace the `raise NotImplementedError` line with your code, then run this cell again")
        print(f"[ ] {name}: not attempted yet - {result.message}.")
        if grading():
            raise ExerciseFailed(f"{name}: not attempted")
        return result
    except CheckFailure as e:
        result = CheckResult(name, "fail", str(e) + (f"\n    hint: {hint}" if hint else ""))
    except Exception as e:  # the learner's code crashed: report it as a failure with its error
        result = CheckResult(name, "fail", f"your code raised {type(e).__name__}: {e}" + (f"\n    hint: {hint}" if hint else ""))
    else:
        result = CheckResult(name, "pass")
        print(f"[x] {name}: PASS")
        return result
    print(f"[!] {name}: FAIL\n    {result.message}")
    if strict() or grading():
        raise ExerciseFailed(f"{name}: {result.message}")
    return result


def compare(got: object, want: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`CheckFailure` with a readable message unless ``got`` matches ``want``."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailure(f"{what}: expected a tensor, got {type(got).__name__}")
    if got.shape != want.shape:
        raise CheckFailure(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise CheckFailure(f"{what}: contains NaN or inf")
    if not torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
        diff = (got.float() - want.float()).abs()
        raise CheckFailure(f"{what}: values differ from the reference (largest difference {diff.max().item():.3g} "
                           f"at index {tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))})")


def load_reference_weights(learner: nn.Module, reference: nn.Module) -> None:
    """Copy the reference module's weights into the learner's, which must use the same layer names."""
    try:
        learner.load_state_dict(reference.state_dict())
    except RuntimeError as e:
        raise CheckFailure("your module's layers are not named like the skeleton's; keep the __init__ as given "
                           f"and write only the marked part.\n    {str(e).splitlines()[0]}") from None
