"""fftd_course.timing: the chapters' measurement clocks."""

import time

import pytest

from fftd_course import timing


def test_best_time_takes_the_fastest_call_after_a_warm_up():
    calls = []

    def work():
        calls.append(None)
        time.sleep(0.02 if len(calls) == 2 else 0.001)  # the first timed call is slow

    seconds = timing.best_time(work, repeats=3)
    assert len(calls) == 4 and seconds < 0.015
    with pytest.raises(ValueError, match="repeats"):
        timing.best_time(work, repeats=0)


def test_stopwatch_measures_the_block():
    with timing.Stopwatch() as clock:
        time.sleep(0.01)
    assert 0.009 < clock.seconds < 1.0
