"""Solutions -> student notebooks: marker handling, staleness and pairing checks, idempotent release."""

import difflib
import json
import re
import shutil
from pathlib import Path

import pytest

from fftd_course.course import assignments
from fftd_course.course.assignments import BEGIN, END, AssignmentError

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py"))


def test_repository_is_in_sync():
    problems = assignments.check(ROOT)
    assert not problems, "run `make release`:\n" + "\n".join(problems)


def test_chapters_exist_in_both_folders_with_notebooks():
    assert [p.name for p in SOLUTIONS][:3] == ["00_setup_and_tour.py", "01_residual_blocks.py", "02_attention.py"]
    for sol in SOLUTIONS:
        for path in (sol.with_suffix(".ipynb"), ROOT / "notebooks" / sol.name, (ROOT / "notebooks" / sol.name).with_suffix(".ipynb")):
            assert path.exists(), path


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.stem)
def test_student_differs_from_solution_only_inside_marked_blocks(sol):
    solution = sol.read_text().splitlines()
    student = (ROOT / "notebooks" / sol.name).read_text().splitlines()
    inside, in_block = set(), False
    for i, line in enumerate(solution):
        if line.strip() == BEGIN:
            in_block = True
        if in_block:
            inside.add(i)
        if line.strip() == END:
            in_block = False
    matcher = difflib.SequenceMatcher(a=solution, b=student, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert set(range(i1, i2)) <= inside and i2 > i1, f"{sol.name}: lines {i1 + 1}-{i2} changed outside a solution block"
        assert all("NotImplementedError" in l or "YOUR CODE HERE" in l for l in student[j1:j2])


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.stem)
def test_each_chapter_has_at_least_two_checked_exercises(sol):
    text = sol.read_text()
    # A prediction (a `predicted_*` function, checks.predict) is a solution block too; it is checked with the
    # exercise it belongs to (checks.with_prediction) or shown beside its measurement (checks.compare_prediction).
    predictions = len(re.findall(r"^def predicted_\w+\(", text, flags=re.M))
    blocks = text.count(BEGIN) - predictions
    assert blocks >= 2, f"{sol.name} has {blocks} exercise(s)"
    assert len(re.findall(r"^checks\.check_\w+\(", text, flags=re.M)) >= blocks, "every exercise needs a check cell"
    shown = len(re.findall(r"checks\.(?:with_prediction|compare_prediction|check_prediction)\(", text))
    assert shown >= predictions, f"{sol.name}: every prediction is checked or shown beside its measurement"
    assert "raise NotImplementedError" not in text.split(BEGIN, 1)[1], "a solution block must hold the answer"


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.stem)
def test_notebooks_have_no_outputs_and_stable_ids(sol):
    for path in (sol.with_suffix(".ipynb"), (ROOT / "notebooks" / sol.name).with_suffix(".ipynb")):
        nb = json.loads(path.read_text())
        ids = [c["id"] for c in nb["cells"]]
        assert len(set(ids)) == len(ids)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path


def test_strip_solutions_keeps_indentation_and_everything_else():
    text = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint(f)\n"
    out = assignments.strip_solutions(text)
    assert out == ("def f(x):\n    y = 1\n    # YOUR CODE HERE\n"
                   '    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")\n'
                   "\nprint(f)\n")


@pytest.mark.parametrize("text, message", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "inside a function"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside the block"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n  ### END SOLUTION\n", "not indented"),
])
def test_strip_solutions_rejects_bad_markers(text, message):
    with pytest.raises(AssignmentError, match=message):
        assignments.strip_solutions(text, "x.py")


@pytest.fixture
def course_copy(tmp_path):
    for name in ("solutions", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    assignments.release(tmp_path, force=True)  # start in sync whatever the state of the repository (tested above)
    shutil.rmtree(tmp_path / "backups", ignore_errors=True)
    return tmp_path


def test_release_twice_changes_nothing(course_copy):
    assignments.release(course_copy)
    before = {p: p.read_bytes() for p in course_copy.rglob("*") if p.is_file()}
    assert assignments.release(course_copy) == assignments.Release()
    assert before == {p: p.read_bytes() for p in course_copy.rglob("*") if p.is_file()}


def test_check_detects_stale_student_and_unpaired_ipynb(course_copy):
    assert assignments.check(course_copy) == []
    sol = course_copy / "solutions" / "00_setup_and_tour.py"
    sol.write_text(sol.read_text().replace("scaled = ((x + 1) * 127.5).round()", "scaled = x"))
    problems = assignments.check(course_copy)
    assert "solutions/00_setup_and_tour.ipynb: differs from its .py" in problems
    assignments.release(course_copy)
    assert assignments.check(course_copy) == []
    # A hand edit of the student's .py outside a block makes it stale; an edited .ipynb is unpaired.
    stu = course_copy / "notebooks" / "00_setup_and_tour.py"
    stu.write_text(stu.read_text().replace("# # 00 · Setup", "# # 00 · Set-up"))  # (a learner's edit, for release)
    ipynb = course_copy / "solutions" / "00_setup_and_tour.ipynb"
    ipynb.write_text(ipynb.read_text().replace("import", "import  ", 1))
    problems = assignments.check(course_copy)
    assert "notebooks/00_setup_and_tour.py: stale: it no longer matches its solution" in problems
    assert "solutions/00_setup_and_tour.ipynb: differs from its .py" in problems


def test_check_reports_orphans_and_missing(course_copy):
    (course_copy / "notebooks" / "99_orphan.py").write_text("# %%\n")
    (course_copy / "notebooks" / "00_setup_and_tour.ipynb").unlink()
    problems = assignments.check(course_copy)
    assert any("99_orphan.py: has no solution" in p for p in problems)
    assert "notebooks/00_setup_and_tour.ipynb: missing" in problems


def test_command_line(course_copy, capsys):
    assert assignments.main(["check", "--root", str(course_copy)]) == 0
    assert "in sync" in capsys.readouterr().out
    (course_copy / "solutions" / "00_setup_and_tour.py").write_text("def f():\n    ### BEGIN SOLUTION\n")
    assert assignments.main(["release", "--root", str(course_copy)]) == 2
    assert "never closed" in capsys.readouterr().err


LEARNER_ANSWER = "    return (x + 1) * 0.5  # my answer"


def _answer_in_student_notebook(course: Path) -> Path:
    stu = course / "notebooks" / "03_vector_quantization.py"
    text = stu.read_text()
    assert "raise NotImplementedError" in text
    stu.write_text(text.replace('    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")',
                                LEARNER_ANSWER, 1))
    return stu


def test_release_leaves_a_learners_answer_alone_and_says_so(course_copy, capsys):
    stu = _answer_in_student_notebook(course_copy)
    edited = stu.read_text()
    sol = course_copy / "solutions" / "03_vector_quantization.py"  # the instructor changes the chapter meanwhile
    sol.write_text(sol.read_text().replace("# # 03", "# # 03 ", 1))
    assert assignments.main(["release", "--root", str(course_copy)]) == 0
    out = capsys.readouterr().out
    assert stu.read_text() == edited
    assert "kept notebooks/03_vector_quantization.py: it holds changes made after the last release" in out
    assert "wrote solutions/03_vector_quantization.ipynb" in out and "FORCE=1" in out
    assert not (course_copy / "backups").exists()
    # Other chapters still follow their solutions; the kept pair is reported by check, not silently fixed.
    assert "notebooks/03_vector_quantization.py: stale: it no longer matches its solution" in assignments.check(course_copy)


def test_release_force_replaces_after_a_backup(course_copy, capsys):
    stu = _answer_in_student_notebook(course_copy)
    edited = stu.read_text()
    assert assignments.main(["release", "--force", "--root", str(course_copy)]) == 0
    out = capsys.readouterr().out
    assert LEARNER_ANSWER not in stu.read_text() and "raise NotImplementedError" in stu.read_text()
    backups = list((course_copy / "backups").glob("*/notebooks/03_vector_quantization.py"))
    assert len(backups) == 1 and backups[0].read_text() == edited
    assert f"backed up {backups[0].relative_to(course_copy)}" in out
    assert assignments.check(course_copy) == []


def test_notebook_outputs_saved_by_a_learner_are_kept(course_copy):
    """Running a chapter in the lab and saving (outputs in the .ipynb) is a learner's work too."""
    ipynb = course_copy / "notebooks" / "00_setup_and_tour.ipynb"
    nb = json.loads(ipynb.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"], code["execution_count"] = [{"output_type": "stream", "name": "stdout", "text": "ran it\n"}], 1
    ipynb.write_text(json.dumps(nb))
    saved = ipynb.read_text()
    sol = course_copy / "solutions" / "00_setup_and_tour.py"
    sol.write_text(sol.read_text().replace("# # 00 · Setup", "# # 00 · Setup ", 1))
    done = assignments.release(course_copy)
    assert ipynb.read_text() == saved and ipynb in done.kept
    assert course_copy / "notebooks" / "00_setup_and_tour.py" in done.kept  # the pair stays together


def test_damaged_manifest_is_a_clear_error(course_copy):
    (course_copy / assignments.MANIFEST).write_text("{not json")
    with pytest.raises(AssignmentError, match="damaged"):
        assignments.release(course_copy)
