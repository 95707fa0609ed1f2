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

import functools
import importlib
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["CheckResult", "CheckFailure", "ExerciseFailed", "WriteItYourself", "Bugs", "run_check", "yours", "learner_code",
           "fresh_seed", "compare", "load_reference_weights", "strict", "grading", "lenient", "WRITE_IT_YOURSELF"]

STRICT_ENV = "FFTD_STRICT_CHECKS"
GRADING_ENV = "FFTD_GRADING"


class CheckFailure(AssertionError):
    """Raised inside a check's trial when the learner's answer differs from the reference."""


class ExerciseFailed(AssertionError):
    """Raised by a check in strict mode (``FFTD_STRICT_CHECKS=1``) when the answer is wrong."""


WRITE_IT_YOURSELF = "this exercise asks you to write it yourself"


class WriteItYourself(CheckFailure):
    """Raised by a package piece that the running check has switched off: the learner's code called it."""


# ---- the package pieces an exercise asks for, switched off while the learner's code runs -----------------

_MISSING = object()


def _resolve(target: str) -> tuple[object, str, object]:
    """``(holder, attribute, value)`` of a dotted path: the longest importable module, then attributes."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        break
    else:
        raise ValueError(f"cannot import any module of {target!r}")
    for name in parts[cut:-1]:
        obj = getattr(obj, name)
    return obj, parts[-1], getattr(obj, parts[-1])


def _underlying(value: object) -> object:
    """The function a class attribute wraps (a property's getter, a static or class method's function)."""
    if isinstance(value, property):
        return value.fget
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    return value


class _Forbidden:
    """The stand-ins of one check's forbidden pieces, resolved once; entered around every call of learner code."""

    def __init__(self, targets: Sequence[str]):
        self.hits: list[str] = []
        self._class_slots: list[tuple[type, str, object, object]] = []  # (class, name, original or _MISSING, stand-in)
        self._wanted: dict[int, object] = {}  # id(original object) -> its stand-in, for aliases in module dicts
        self._names: dict[int, str] = {}
        self._dict_slots: list[tuple[dict, str, object, object]] = []
        self._scanned: set[int] = set()
        self._depth = 0
        holders = []
        for target in targets:
            holder, attr, value = _resolve(target)
            stand_in = self._stand_in(target)
            if isinstance(holder, type):
                raw = holder.__dict__.get(attr, _MISSING)
                shown = raw if raw is not _MISSING else next(
                    (k.__dict__[attr] for k in holder.__mro__ if attr in k.__dict__), value)
                wrapped = (property(stand_in) if isinstance(shown, property) else
                           staticmethod(stand_in) if isinstance(shown, staticmethod) else
                           classmethod(stand_in) if isinstance(shown, classmethod) else stand_in)
                self._class_slots.append((holder, attr, raw, wrapped))
                self._want(_underlying(shown), stand_in, target)
            else:
                self._want(value, stand_in, target)
                holders.append(vars(holder))
        for namespace in holders:
            self.scan(namespace)
        for module in list(sys.modules.values()):  # every alias the package holds
            if getattr(module, "__name__", "").startswith("fftd_course") or getattr(module, "__name__", "") == "__main__":
                self.scan(getattr(module, "__dict__", None))

    def _want(self, obj: object, stand_in: object, target: str) -> None:
        if callable(obj) and not isinstance(obj, type(sys)):
            self._wanted[id(obj)] = (obj, stand_in)
            self._names[id(obj)] = target

    def _stand_in(self, target: str) -> Callable[..., Any]:
        shown = f"the package's {target.removeprefix('fftd_course.')}" if target.startswith("fftd_course.") else target

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            self.hits.append(shown)
            raise WriteItYourself(f"your code calls {shown}, which is switched off while this check runs: "
                                  f"{WRITE_IT_YOURSELF}")

        stand_in.__name__ = stand_in.__qualname__ = target.rsplit(".", 1)[-1]
        return stand_in

    def scan(self, namespace: dict | None) -> None:
        """Find the forbidden objects among the values of ``namespace`` (a module's or a function's globals)."""
        if namespace is None or id(namespace) in self._scanned or not self._wanted:
            return
        self._scanned.add(id(namespace))
        wanted = self._wanted
        for key, value in list(namespace.items()):
            found = wanted.get(id(value))
            if found is not None and found[0] is value:
                self._dict_slots.append((namespace, key, value, found[1]))
                if self._depth:  # already active: switch this one off too
                    namespace[key] = found[1]

    def __enter__(self) -> "_Forbidden":
        self._depth += 1
        if self._depth == 1:
            self._modules_before = set(sys.modules)
            for namespace, key, _, stand_in in self._dict_slots:
                namespace[key] = stand_in
            for cls, name, _, stand_in in self._class_slots:
                setattr(cls, name, stand_in)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        for cls, name, original, _ in reversed(self._class_slots):
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        for namespace, key, original, stand_in in reversed(self._dict_slots):
            if namespace.get(key) is stand_in:
                namespace[key] = original
        # A module first imported by the learner's code copied a stand-in: give it the real piece back.
        originals = {id(stand_in): obj for obj, stand_in in self._wanted.values()}
        for name in set(sys.modules) - self._modules_before:
            namespace = getattr(sys.modules[name], "__dict__", None) or {}
            for key, value in list(namespace.items()):
                if id(value) in originals:
                    namespace[key] = originals[id(value)]


_active: _Forbidden | None = None
forbidden_pieces: dict[str, tuple[str, ...]] = {}  # what each check (by its name) switched off when it last ran


def _namespaces_of(obj: object) -> list[dict]:
    """The module namespaces the learner's function or class reads its names from (through wrappers too)."""
    found = []
    for _ in range(8):  # a wrapper's wrapped function (functools.wraps), a partial's function, a method's function
        if isinstance(obj, functools.partial):
            obj = obj.func
        if isinstance(obj, type):
            namespace = getattr(sys.modules.get(obj.__module__), "__dict__", None)
        else:
            namespace = getattr(obj, "__globals__", None) or getattr(getattr(obj, "__func__", None), "__globals__", None)
        if namespace is not None:
            found.append(namespace)
        obj = getattr(obj, "__wrapped__", None)
        if obj is None:
            break
    return found


@contextmanager
def learner_code(owner: object = None) -> Iterator[None]:
    """Run the block as the learner's code: the running check's forbidden pieces raise inside it.

    ``owner`` (the learner's function or class) adds its module's names to those switched off, so that a
    ``from fftd_course.x import piece`` in the learner's notebook meets the stand-in too.
    """
    guard = _active
    if guard is None:
        yield
        return
    for namespace in _namespaces_of(owner):
        guard.scan(namespace)
    with guard:
        yield


def yours(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (the learner's function) as the check calls it: every call runs inside :func:`learner_code`."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with learner_code(fn):
            return fn(*args, **kwargs)

    return call


# ---- find-the-bug hints, in steps --------------------------------------------------------------------

_nudges_given: dict[str, int] = {}


@dataclass(frozen=True)
class Bugs:
    """A find-the-bug exercise: the given code had ``total`` bugs; ``nudges`` are its hints, one per FAIL.

    ``remaining`` (optional) runs one sub-test per bug on the learner's answer and returns how many still
    fail; without it the FAIL states the total the exercise was written with.
    """

    total: int
    nudges: tuple[str, ...]
    remaining: Callable[[], int] | None = None

    def hint(self, name: str) -> str:
        given = _nudges_given.get(name, 0)
        _nudges_given[name] = given + 1
        left = None
        if self.remaining is not None:
            try:
                left = int(self.remaining())
            except Exception:  # a sub-test that cannot run leaves the count unknown
                left = None
        plural = "s" if self.total != 1 else ""
        if left is None:
            count = f"the given code had {self.total} bug{plural}"
        elif left == 0:
            count = f"the {self.total} bug{plural} of the given code look{'' if plural else 's'} fixed, yet something else differs"
        else:
            count = f"{left} of the {self.total} bug{plural} of the given code remain{'s' if left == 1 else ''}"
        if given < len(self.nudges):
            nudge = f"nudge {given + 1} of {len(self.nudges)}: {self.nudges[given]}"
        else:
            nudge = f"no more nudges; the last one again: {self.nudges[-1]}"
        return f"{count}. {nudge}"


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


def run_check(name: str, trial: Callable[[], None], hint: str = "", forbid: Sequence[str] = (),
              bugs: Bugs | None = None) -> CheckResult:
    """Run ``trial`` (which raises :class:`CheckFailure` on a mismatch) and report the verdict.

    ``forbid``: dotted paths of the package pieces the exercise asks the learner to write; they raise
    :class:`WriteItYourself` inside :func:`yours` / :func:`learner_code` while ``trial`` runs, and a learner's
    code that called one FAILs with that message (even if it caught the error). ``bugs``: the hints of a
    find-the-bug exercise, given in steps (in place of ``hint``).
    """
    global _active
    forbidden_pieces[name] = tuple(forbid)
    outer, _active = _active, _Forbidden(forbid)
    guard = _active
    try:
        trial()
    except NotImplementedError:
        if guard.hits:
            return _report_fail(name, _shortcut_message(guard))
        result = CheckResult(name, "not attempted", "replace the `raise NotImplementedError` line with your code, then run this cell again")
        print(f"[ ] {name}: not attempted yet - {result.message}.")
        if grading():
            raise ExerciseFailed(f"{name}: not attempted")
        return result
    except CheckFailure as e:
        message = str(e)
    except Exception as e:  # the learner's code crashed: report it as a failure with its error
        message = f"your code raised {type(e).__name__}: {e}"
    else:
        message = None
    finally:
        _active = outer
    if guard.hits:  # reported even when the learner's code caught the stand-in's error
        return _report_fail(name, _shortcut_message(guard))
    if message is None:
        print(f"[x] {name}: PASS")
        return CheckResult(name, "pass")
    if bugs is not None:
        _active = guard  # the sub-tests that count the remaining bugs run the learner's code again
        try:
            hint = bugs.hint(name)
        finally:
            _active = outer
        if guard.hits:
            return _report_fail(name, _shortcut_message(guard))
    return _report_fail(name, message + (f"\n    hint: {hint}" if hint else ""))


def _shortcut_message(guard: _Forbidden) -> str:
    return (f"your code calls {guard.hits[0]}, which is switched off while this check runs: "
            f"{WRITE_IT_YOURSELF}, from smaller pieces")


def _report_fail(name: str, message: str) -> CheckResult:
    result = CheckResult(name, "fail", message)
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
