"""Repository-wide pytest hooks: report how long each chapter took to execute.

A run that executed chapters also writes the table to ``test-artifacts/chapter-times.json`` with the date and
the machine; ``python -m fftd_course.course.syllabus update`` copies it into SYLLABUS.md (``make syllabus``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ARTIFACT = Path(__file__).resolve().parent / "test-artifacts" / "chapter-times.json"

_chapter_seconds: dict[str, float] = defaultdict(float)
_chapter_failed: set[str] = set()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _chapter_seconds[path] += report.duration
        if report.failed:
            _chapter_failed.add(path)


def pytest_terminal_summary(terminalreporter):
    if not _chapter_seconds:
        return
    terminalreporter.section("chapter execution times")
    for path in sorted(_chapter_seconds, key=lambda p: (Path(p).name, p)):
        terminalreporter.write_line(f"{_chapter_seconds[path]:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_chapter_seconds.values()):7.1f} s  in all")

    from fftd_course.course.syllabus import artifact

    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(artifact(_chapter_seconds, _chapter_failed), indent=2) + "\n", encoding="utf-8")
    terminalreporter.write_line(f"written to {ARTIFACT.relative_to(ARTIFACT.parent.parent)} "
                                "(`make syllabus` copies it into SYLLABUS.md)")
