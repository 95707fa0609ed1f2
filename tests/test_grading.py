"""Grading submissions (fftd_course.course.grading) and nbgrader on solutions/: every way a submission can go wrong.

The submissions are chapter 00 (the fastest chapter) as a learner would hand it in: the solution, the fresh
student notebook, one wrong answer, answers that raise or loop, a check replaced in the notebook, check cells
edited or deleted, a kernel that dies, a damaged file. All are graded once (each in its own kernel).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fftd_course.course import assignments, grading

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "00_setup_and_tour"
EXERCISES = ["check_count_shared", "check_to_pixels", "check_channel_stats"]
CELL_TIMEOUT = 20  # chapter 00's slowest cell takes about a second; a loop is interrupted after this


def _notebook(kind: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / kind / f"{CHAPTER}.ipynb", as_version=4)


def _cell(nb, grade_id: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _replace_answer(nb, name: str, body: str) -> None:
    i = _cell(nb, f"answer_{name}")
    head = nb.cells[i].source.split('"""', 2)
    nb.cells[i].source = head[0] + '"""' + head[1] + '"""\n' + body


def _insert(nb, before: int, source: str) -> None:
    nb.cells.insert(before, nbformat.v4.new_code_cell(source))


def _write(folder: Path, learner: str, nb, suffix: str = ".ipynb") -> Path:
    path = folder / learner / f"{CHAPTER}{suffix}"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    subs = {}
    subs["full"] = _write(folder, "full", _notebook("solutions"))
    fresh = folder / "fresh" / f"{CHAPTER}.py"  # the jupytext pair, as a learner may hand it in
    fresh.parent.mkdir()
    shutil.copy(ROOT / "notebooks" / f"{CHAPTER}.py", fresh)
    subs["fresh"] = fresh

    nb = _notebook("solutions")  # one wrong answer: 2 of 3
    _replace_answer(nb, "count_shared", "    return len(b)\n")
    subs["partial"] = _write(folder, "partial", nb)

    nb = _notebook("solutions")  # raises, loops, replaces a check; a stray cell raises too
    _replace_answer(nb, "count_shared", "    raise ValueError('oops')\n")
    _replace_answer(nb, "channel_stats", "    while True:\n        pass\n")
    _insert(nb, _cell(nb, "check_to_pixels"),
            "checks.check_to_pixels = lambda f: print('[x] check_to_pixels: PASS')")
    _insert(nb, 1, "1 / 0")
    subs["mischief"] = _write(folder, "mischief", nb)

    nb = _notebook("solutions")  # an edited check, a deleted check, a check's helper replaced, then the kernel dies
    nb.cells[_cell(nb, "check_count_shared")].source = "checks.check_count_shared(lambda a, b: 0)"
    del nb.cells[_cell(nb, "check_channel_stats")]
    _insert(nb, _cell(nb, "check_to_pixels"),
            "import fftd_course.checks.ch00 as m\n"
            "m.run_check = lambda name, trial, *args, **kwargs: m.CheckResult(name, 'pass')")
    nb.cells.append(nbformat.v4.new_code_cell("import os\nos._exit(1)"))
    nb.cells.append(nbformat.v4.new_code_cell("print('never runs')"))
    subs["tamper"] = _write(folder, "tamper", nb)

    damaged = folder / "damaged" / f"{CHAPTER}.ipynb"
    damaged.parent.mkdir()
    damaged.write_text('{"cells": [')
    subs["damaged"] = damaged

    reports = grading.grade([subs[k] for k in subs], ROOT, cell_timeout=CELL_TIMEOUT, progress=False)
    return {k: r for k, r in zip(subs, reports)}, folder


def _statuses(report) -> dict[str, str]:
    return {s.exercise: s.status for s in report.scores}


def test_the_solution_gets_full_marks(graded):
    r = graded[0]["full"]
    assert r.learner == "full" and r.chapter == CHAPTER
    assert [s.exercise for s in r.scores] == EXERCISES
    assert (r.points, r.max_points) == (3, 3), grading.format_report([r])
    assert r.notes == []


def test_a_fresh_student_notebook_gets_zero(graded):
    r = graded[0]["fresh"]
    assert (r.points, r.max_points) == (0, 3)
    assert set(_statuses(r).values()) == {"not attempted"}


def test_one_wrong_answer_costs_one_point(graded):
    r = graded[0]["partial"]
    assert r.points == 2
    assert _statuses(r)["check_count_shared"] == "fail"
    wrong = next(s for s in r.scores if s.exercise == "check_count_shared")
    assert "expected" in wrong.reason


def test_raising_looping_and_a_replaced_check_each_fail_with_the_reason(graded):
    r = graded[0]["mischief"]
    s = {x.exercise: x for x in r.scores}
    assert r.points == 0, grading.format_report([r])
    assert s["check_count_shared"].status == "fail" and "ValueError: oops" in s["check_count_shared"].reason
    assert s["check_channel_stats"].status == "timed out"
    assert s["check_to_pixels"].status == "check function replaced"
    assert any("ZeroDivisionError" in n for n in r.notes) and any("interrupted" in n for n in r.notes)


def test_edited_or_deleted_check_cells_a_replaced_helper_and_a_dead_kernel(graded):
    r = graded[0]["tamper"]
    assert _statuses(r) == {"check_count_shared": "check cell edited", "check_channel_stats": "check cell deleted",
                            "check_to_pixels": "check function replaced"}
    assert r.points == 0
    assert "check_to_pixels.run_check" in next(s for s in r.scores if s.exercise == "check_to_pixels").reason


def test_a_damaged_file_is_scored_not_run(graded):
    r = graded[0]["damaged"]
    assert set(_statuses(r).values()) == {"not run"} and "could not be read" in r.scores[0].reason


def test_report_and_csv(graded, tmp_path):
    reports = list(graded[0].values())
    text = grading.format_report(reports)
    assert re.search(r"^full +00_setup_and_tour +3/3$", text, flags=re.M) and "check cell edited" in text
    grading.write_csv(reports, tmp_path / "scores.csv")
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == 3 * len(reports)
    assert {r["status"] for r in rows if r["learner"] == "full"} == {"pass"}


def test_command_line_refuses_what_it_cannot_grade(tmp_path, capsys):
    odd = tmp_path / "alice" / "homework.ipynb"
    odd.parent.mkdir()
    odd.write_text("{}")
    assert assignments.main(["grade", str(odd)]) == 2
    assert "cannot tell which chapter" in capsys.readouterr().err
    assert assignments.main(["grade", str(tmp_path / "missing" / "00_setup_and_tour.ipynb")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_cells_are_locked_and_answer_cells_marked_for_nbgrader():
    for kind in ("solutions", "notebooks"):
        for path in sorted((ROOT / kind).glob("[0-9][0-9]_*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
            # a prediction cell (predict, then measure) is an answer without a check of its own
            answers = [m for m in meta if m["solution"] and not m["grade_id"].startswith("answer_predicted_")]
            tests = [m for m in meta if m["grade"]]
            assert len(answers) == len(tests) >= 2, path
            for c in nb.cells:
                if c.metadata.get("nbgrader", {}).get("grade"):
                    assert c.metadata["editable"] is False and c.metadata["deletable"] is False


nbgrader = pytest.importorskip("nbgrader")


def test_nbgrader_generate_and_autograde_on_solutions(tmp_path):
    """An instructor's nbgrader course: generate_assignment on solutions/, autograde a solution and a fresh one."""
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.CourseDirectory.course_id = 'fftd'\n")
    source = tmp_path / "source" / "ch00"
    source.mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / f"{CHAPTER}.ipynb", source)
    # nbgrader runs `alembic` from PATH: the environment's bin folder, as in an activated .venv.
    env = {**os.environ, "FFTD_GRADING": "1", "FFTD_STATIC_PLOTS": "1", "MPLBACKEND": "Agg",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FFTD_STRICT_CHECKS", None)
    nbg = [sys.executable, "-m", "nbgrader"]

    def run(*args):
        done = subprocess.run([*nbg, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run("db", "assignment", "add", "ch00")
    run("generate_assignment", "ch00", "--force")
    released = nbformat.read(tmp_path / "release" / "ch00" / f"{CHAPTER}.ipynb", as_version=4)
    answer = released.cells[_cell(released, "answer_count_shared")].source
    assert "raise NotImplementedError" in answer and "flat_a" not in answer
    for student, nb_path in (("sol", source / f"{CHAPTER}.ipynb"), ("fresh", tmp_path / "release" / "ch00" / f"{CHAPTER}.ipynb")):
        target = tmp_path / "submitted" / student / "ch00"
        target.mkdir(parents=True)
        shutil.copy(nb_path, target)
    run("autograde", "ch00", "--create")
    run("export", "--to", str(tmp_path / "grades.csv"))
    scores = {row["student_id"]: float(row["raw_score"]) for row in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert scores == {"sol": 3.0, "fresh": 0.0}
