"""SYLLABUS.md's chapter times: equal to docs/chapter-times.json, one row per chapter, and `update`'s rules."""

import json
from pathlib import Path

import pytest

from fftd_course.course import syllabus

ROOT = Path(__file__).resolve().parent.parent


def _stems(root: Path) -> list[str]:
    return [p.stem for p in sorted((root / "solutions").glob("[0-9][0-9]_*.py"))]


def test_syllabus_table_is_the_rendering_of_the_committed_times():
    assert syllabus.check(ROOT) == []


def test_the_table_times_every_chapter_in_both_versions():
    times = syllabus.load_times(ROOT)
    table = syllabus.render(times)
    for stem in _stems(ROOT):
        entry = times["chapters"][stem]
        assert entry["solutions"] > 0 and entry["notebooks"] > 0
        row = next((line for line in table.splitlines() if f"(notebooks/{stem}.ipynb)" in line), None)
        assert row is not None, f"SYLLABUS.md's table has no row for {stem}"
        assert row.count("|") >= 4
    for m in times["measurements"]:
        assert m["date"] and m["machine"]["cpus"] and m["machine"]["torch"]


def _course(tmp_path: Path, stems=("00_a", "01_b")) -> Path:
    (tmp_path / "solutions").mkdir()
    (tmp_path / "docs").mkdir()
    for stem in stems:
        (tmp_path / "solutions" / f"{stem}.py").write_text("# %%\n")
    (tmp_path / "SYLLABUS.md").write_text(f"# Syllabus\n\n{syllabus.BEGIN}\nold\n{syllabus.END}\n\nAfter.\n")
    return tmp_path


def _run(tmp_path: Path, seconds: dict, failed=(), name="run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(syllabus.artifact(seconds, set(failed))))
    return path


def test_update_writes_the_times_and_the_table_between_the_markers(tmp_path):
    root = _course(tmp_path)
    run = _run(tmp_path, {"solutions/00_a.ipynb": 12.34, "notebooks/00_a.ipynb": 11.0,
                          "solutions/01_b.ipynb": 3.21, "notebooks/01_b.ipynb": 2.0})
    syllabus.update(root, run, note="A test")
    text = (root / "SYLLABUS.md").read_text()
    assert text.startswith("# Syllabus\n\n") and text.endswith("\n\nAfter.\n") and "old" not in text
    assert "| [00 a](notebooks/00_a.ipynb) | 12 | 11 |" in text
    assert "| [01 b](notebooks/01_b.ipynb) | 3.2 | 2.0 |" in text
    assert "| **all chapters** | **16** | **13** |" in text and "A test." in text
    assert syllabus.check(root) == []
    (root / "solutions" / "02_c.py").write_text("# %%\n")           # a new chapter without a time
    assert any("02_c" in p for p in syllabus.check(root))


def test_update_refuses_partial_or_failed_runs_unless_told_to_merge(tmp_path):
    root = _course(tmp_path)
    full = _run(tmp_path, {"solutions/00_a.ipynb": 10.0, "notebooks/00_a.ipynb": 10.0,
                           "solutions/01_b.ipynb": 20.0, "notebooks/01_b.ipynb": 20.0}, name="full.json")
    syllabus.update(root, full)
    partial = _run(tmp_path, {"solutions/01_b.ipynb": 30.0, "notebooks/01_b.ipynb": 31.0}, name="partial.json")
    with pytest.raises(syllabus.SyllabusError, match="00_a"):
        syllabus.update(root, partial)
    times = syllabus.update(root, partial, merge=True)
    assert times["chapters"]["00_a"] == {"solutions": 10.0, "notebooks": 10.0, "measurement": 0}
    assert times["chapters"]["01_b"] == {"solutions": 30.0, "notebooks": 31.0, "measurement": 1}
    assert len(times["measurements"]) == 2 and "(a)" in (root / "SYLLABUS.md").read_text()
    assert syllabus.check(root) == []
    failed = _run(tmp_path, {"solutions/00_a.ipynb": 1.0, "notebooks/00_a.ipynb": 1.0,
                             "solutions/01_b.ipynb": 1.0, "notebooks/01_b.ipynb": 1.0},
                  failed=["solutions/01_b.ipynb"], name="failed.json")
    with pytest.raises(syllabus.SyllabusError, match="failing"):
        syllabus.update(root, failed)


def test_check_sees_a_hand_edited_table(tmp_path):
    root = _course(tmp_path)
    syllabus.update(root, _run(tmp_path, {"solutions/00_a.ipynb": 10.0, "notebooks/00_a.ipynb": 10.0,
                                          "solutions/01_b.ipynb": 20.0, "notebooks/01_b.ipynb": 20.0}))
    path = root / "SYLLABUS.md"
    path.write_text(path.read_text().replace("| 20 | 20 |", "| 19 | 20 |"))
    assert syllabus.check(root) == [f"SYLLABUS.md: the times table differs from the rendering of {syllabus.TIMES}"]
