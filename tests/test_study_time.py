"""SYLLABUS.md's study-time table: estimated by code from the chapters, and kept true by `syllabus.check`."""

from pathlib import Path

from fftd_course.course import syllabus

ROOT = Path(__file__).resolve().parent.parent

CHAPTER = '''# ---
# jupyter:
#   kernelspec:
#     name: python3
# ---

# %% [markdown]
# # 01 · A chapter
#
# Two hundred words would take two minutes; these are eleven words of prose.

# %%
import torch
x = torch.ones(3)

# %% [markdown]
# **Exercise 1 (find the bug).** Fix it.

# %%
def fixed(x):
    """Doubles x."""
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION


# %%
checks.check_fixed(fixed)

# %% [markdown]
# **Exercise 2 (predict, then measure).** Guess first.

# %%
def predicted_size() -> int:
    ### BEGIN SOLUTION
    return 3
    ### END SOLUTION


# %%
checks.check_size(checks.with_prediction(predicted_size, fixed))
'''


def _course(tmp_path: Path) -> Path:
    (tmp_path / "solutions").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "solutions" / "01_a_chapter.py").write_text(CHAPTER)
    (tmp_path / "SYLLABUS.md").write_text(f"# Syllabus\n\n{syllabus.STUDY_BEGIN}\nold\n{syllabus.STUDY_END}\n\n"
                                          f"{syllabus.BEGIN}\n{syllabus.END}\n")
    return tmp_path


def test_the_estimate_counts_prose_code_exercises_and_predictions(tmp_path):
    e = syllabus.estimate_study(_course(tmp_path) / "solutions" / "01_a_chapter.py")
    # markdown words ("#" and "·" are not words); code lines outside answers, comments and blank lines
    assert e.words == 3 + 13 + 7 + 7 and e.code_lines == 2 + 2 + 1 + 1 + 1, e
    assert e.exercises == {"find the bug": 1, "predict and measure": 1} and e.predictions == 1
    want = (e.words / syllabus.READING_WPM + e.code_lines / syllabus.CODE_LINES_PER_MINUTE
            + syllabus.EXERCISE_MINUTES["find the bug"] + syllabus.EXERCISE_MINUTES["predict and measure"]
            + syllabus.PREDICTION_MINUTES)
    assert e.minutes == 5 * round(want / 5) and e.minutes % 5 == 0


def test_kinds_come_from_the_exercise_heading():
    assert syllabus.exercise_kind("find the bug, stretching") == "extend or stretch"
    assert syllabus.exercise_kind("a variant, then predict and measure") == "predict and measure"
    assert syllabus.exercise_kind("a variant: another spacing") == "variant"
    assert syllabus.exercise_kind("warm-up") == "warm-up" and syllabus.exercise_kind(None) == "other"


def test_the_table_is_written_and_checked(tmp_path):
    root = _course(tmp_path)
    syllabus.update_study(root)
    text = (root / "SYLLABUS.md").read_text()
    assert "old" not in text and "| [01 a chapter](notebooks/01_a_chapter.ipynb) |" in text
    assert f"{syllabus.READING_WPM} words a minute" in text  # says how it was estimated
    minutes = syllabus.estimate_study(root / "solutions" / "01_a_chapter.py").minutes
    inside = syllabus._split(text, root / "SYLLABUS.md", syllabus.STUDY_BEGIN, syllabus.STUDY_END)[1]
    times = {"chapters": {}}
    assert syllabus._study_problems(inside, root, times) == []
    # a chapter that grew a lot: the table is stale
    (root / "solutions" / "01_a_chapter.py").write_text(CHAPTER + "# %% [markdown]\n# " + "word " * 3000 + "\n")
    problems = syllabus._study_problems(inside, root, times)
    assert len(problems) == 1 and "01_a_chapter's study time says" in problems[0], problems
    assert minutes < syllabus.estimate_study(root / "solutions" / "01_a_chapter.py").minutes


def test_the_committed_syllabus_gives_every_chapter_a_study_time_beside_its_cpu_time():
    text = (ROOT / "SYLLABUS.md").read_text(encoding="utf-8")
    inside = syllabus._split(text, ROOT / "SYLLABUS.md", syllabus.STUDY_BEGIN, syllabus.STUDY_END)[1]
    assert syllabus._study_problems(inside, ROOT, syllabus.load_times(ROOT)) == []
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")):
        row = next(line for line in inside.splitlines() if f"(notebooks/{path.stem}.ipynb)" in line)
        assert " min |" in row, row
