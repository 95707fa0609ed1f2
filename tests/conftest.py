"""Fixtures shared by the tests: the exercise checks' modes (tests/test_checks*.py) and one-thread training runs."""

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """The trainer's tests run tiny models: one thread runs them fastest, and a second one that spins while another
    process holds the core (a shared CPU) made the in-process runs 20x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
