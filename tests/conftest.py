"""Fixtures shared by the exercise-check tests (tests/test_checks*.py)."""

import pytest

from fftd_course.checks import core


@pytest.fixture
def strict(monkeypatch):
    """Failed checks raise, as under `make test`."""
    monkeypatch.setenv(core.STRICT_ENV, "1")


@pytest.fixture
def lenient_env(monkeypatch):
    """Failed checks only print, as in a learner's notebook."""
    monkeypatch.delenv(core.STRICT_ENV, raising=False)
    monkeypatch.delenv(core.GRADING_ENV, raising=False)  # (nbgrader's mode: every non-PASS verdict raises)
