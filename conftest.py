"""Repository-wide pytest hooks: report how long each chapter took to execute."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

_chapter_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _chapter_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _chapter_seconds:
        return
    terminalreporter.section("chapter execution times")
    for path in sorted(_chapter_seconds, key=lambda p: (Path(p).name, p)):
        terminalreporter.write_line(f"{_chapter_seconds[path]:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_chapter_seconds.values()):7.1f} s  in all")
