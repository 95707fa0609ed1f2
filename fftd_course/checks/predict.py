"""Predict, then measure: the learner's prediction captured as a value, and shown beside the measurement.

A chapter's prediction cell defines a function that returns the prediction (the value between the
solution markers, so the student notebook holds a stub that raises ``NotImplementedError`` until the
learner writes ``return ...``)::

    def predicted_spread() -> str:
        ### BEGIN SOLUTION
        return "larger"
        ### END SOLUTION

Three helpers use it (each also accepts a plain value instead of the function):

* :func:`check_prediction`: PASS once a prediction is written (any value, or one of ``choices``); FAIL
  "write your prediction in the cell above first" while it is a placeholder (``None``, ``...``, ``""``);
  "not attempted yet" while it is the stub, so "Run All" of a student notebook reaches the end.
* :func:`with_prediction`: wraps the answer a graded check receives, ``checks.check_x(checks.with_prediction(
  predicted_x, answer))``: the answer itself once a prediction exists, else a stand-in that makes the check
  report "write your prediction in the cell above first" (not attempted for the stub, FAIL for a placeholder).
* :func:`compare_prediction`: after the measurement, the prediction and the measurement side by side (after the
  same verdict as :func:`check_prediction`, which is not graded there: the cell is the learner's own feedback).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from .core import CheckFailure, CheckResult, lenient, run_check

__all__ = ["MISSING", "PredictionMissing", "read_prediction", "check_prediction", "with_prediction",
           "compare_prediction"]

MISSING = "write your prediction in the cell above first"
PLACEHOLDERS = ("", "...", "?", "todo", "TODO")


class PredictionMissing(CheckFailure):
    """The prediction cell still holds a placeholder: the check fails until a prediction is written."""


def _is_placeholder(value: Any) -> bool:
    if value is None or value is Ellipsis:
        return True
    if isinstance(value, str):
        return value.strip() in PLACEHOLDERS
    if isinstance(value, Mapping):
        return not value or any(_is_placeholder(v) for v in value.values())
    return False


def read_prediction(prediction: Any) -> tuple[str, Any]:
    """``("given", value)``, ``("not attempted", None)`` for the stub, or ``("missing", None)`` for a placeholder.

    ``prediction`` is the value, or a function without arguments that returns it (a chapter's prediction cell).
    """
    value = prediction
    if callable(prediction) and not isinstance(prediction, type):
        try:
            value = prediction()
        except NotImplementedError:
            return "not attempted", None
        except Exception as e:  # a prediction cell that crashes holds no prediction yet
            return "missing", f"{type(e).__name__}: {e}"
    return ("missing", None) if _is_placeholder(value) else ("given", value)


def _name(prediction: Any) -> str:
    return getattr(prediction, "__name__", "prediction") if callable(prediction) else "prediction"


def _require(prediction: Any, choices: tuple | list | None = None) -> Any:
    """The prediction's value; raises NotImplementedError (stub) or :class:`PredictionMissing` (placeholder)."""
    state, value = read_prediction(prediction)
    if state == "not attempted":
        raise NotImplementedError(MISSING)
    if state == "missing":
        raise PredictionMissing(MISSING + (f" (the cell raised {value})" if value else ""))
    if choices is not None:
        wanted = list(choices)
        values = value.values() if isinstance(value, Mapping) else [value]
        odd = [v for v in values if v not in wanted]
        if odd:
            raise PredictionMissing(f"{odd[0]!r} is not one of the answers offered: {', '.join(map(repr, wanted))}")
    return value


def check_prediction(prediction: Any, choices: tuple | list | None = None) -> CheckResult:
    """PASS when a prediction is written (any value; one of ``choices`` when given), FAIL while it is a placeholder."""
    return run_check(_name(prediction), lambda: _require(prediction, choices),
                     hint="any honest guess passes: the point is to commit to one before you measure")


def with_prediction(prediction: Any, answer: Callable) -> Callable:
    """``answer`` once ``prediction`` is written; before that a stand-in that tells the check to wait for it.

    Used inside a graded check cell, ``checks.check_x(checks.with_prediction(predicted_x, x))``, so the check
    grades the measurement code only after a prediction exists: with the prediction still a stub the check says
    "not attempted yet", with a placeholder it FAILs with "write your prediction in the cell above first".
    """
    state, _ = read_prediction(prediction)
    if state == "given":
        return answer

    def prediction_first(*args: Any, **kwargs: Any) -> Any:
        if state == "not attempted":
            raise NotImplementedError(MISSING)
        raise PredictionMissing(f"{MISSING} ({_name(prediction)}), then run this check again")

    prediction_first.__name__ = getattr(answer, "__name__", "answer")
    prediction_first.__qualname__ = prediction_first.__name__
    prediction_first.__doc__ = MISSING
    return prediction_first


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_prediction(prediction: Any, measured: Any, what: str = "result",
                       agrees: Callable[[Any, Any], bool] | None = None) -> None:
    """Print the prediction beside the measurement, one row per item when both are dicts (``what`` names a single row).

    ``measured`` is ``None`` (or an empty dict) while the measurement could not run yet. ``agrees(predicted,
    measured)``, when given, adds a column saying whether each prediction came true.
    """
    with lenient():  # feedback for the learner, never a stop: the graded checks sit elsewhere
        verdict = run_check(_name(prediction), lambda: _require(prediction))
    value = read_prediction(prediction)[1] if verdict else None
    if isinstance(measured, Mapping) or isinstance(value, Mapping):
        measured_keys = list(measured) if isinstance(measured, Mapping) else []
        predicted_keys = list(value) if isinstance(value, Mapping) else []  # one value predicts every row
        keys = measured_keys + [k for k in predicted_keys if k not in measured_keys] or [what]
    else:
        keys = [what]

    def pick(d: Any, key: Any) -> Any:
        return d.get(key) if isinstance(d, Mapping) else d

    rows = [("", "you predicted", "measured") + (("came true?",) if agrees else ())]
    for key in keys:
        p, m = pick(value, key), pick(measured, key)
        row = (_text(key), "(no prediction yet)" if p is None else _text(p),
               "(not measured yet)" if m is None else _text(m))
        if agrees:
            row += ("" if p is None or m is None else ("yes" if agrees(p, m) else "no"),)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
