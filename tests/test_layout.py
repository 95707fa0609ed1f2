"""The old flat module names still work after the move into evaluation/ and course/ (released notebooks use them).

``fftd_course.metrics`` and the other old names are shims: importing one gives the very module object of its
new home, so attributes, ``isinstance`` checks and monkeypatching behave the same under either name, and
``python -m fftd_course.<old name>`` runs what ``python -m fftd_course.<new home>`` runs, exit status included.
(``tests/test_layering.py`` checks the layers themselves.)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MOVED = {
    "metrics": "fftd_course.evaluation.metrics",
    "judge": "fftd_course.evaluation.judge",
    "bench": "fftd_course.evaluation.bench",
    "assignments": "fftd_course.course.assignments",
    "grading": "fftd_course.course.grading",
    "site": "fftd_course.course.site",
    "syllabus": "fftd_course.course.syllabus",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_name_is_the_new_module(old):
    import fftd_course

    new = importlib.import_module(MOVED[old])
    assert importlib.import_module(f"fftd_course.{old}") is new
    assert sys.modules[f"fftd_course.{old}"] is new
    assert getattr(fftd_course, old) is new
    assert new.__name__ == MOVED[old]


def test_old_names_first_in_a_fresh_interpreter():
    # Released notebooks import the old names before anything else: `from fftd_course import metrics, judge`.
    code = textwrap.dedent(f"""
        import importlib
        from fftd_course import metrics, judge, bench, assignments, grading, site, syllabus
        import fftd_course.metrics
        moved = {MOVED!r}
        for old, new in moved.items():
            assert locals()[old] is importlib.import_module(new), old
        assert fftd_course.metrics is importlib.import_module("fftd_course.evaluation.metrics")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("old", ["bench", "assignments", "site", "syllabus"])
def test_python_m_old_name_runs_the_new_module(old):
    result = subprocess.run([sys.executable, "-m", f"fftd_course.{old}", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {MOVED[old]}" in result.stdout
    assert "Warning" not in result.stderr, result.stderr  # e.g. runpy's "found in sys.modules" warning


def test_python_m_old_name_passes_the_exit_status_on(tmp_path):
    # No chapters under --root: an error (exit status 2), under the old name as under the new one.
    for module in ("fftd_course.assignments", "fftd_course.course.assignments"):
        result = subprocess.run([sys.executable, "-m", module, "check", "--root", str(tmp_path)],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2 and "no chapters found" in result.stderr, (module, result.stderr)
