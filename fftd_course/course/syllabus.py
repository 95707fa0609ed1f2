"""SYLLABUS.md's table of chapter times, kept equal to the measurement in ``docs/chapter-times.json``.

Every ``pytest`` run that executes chapters (``make test``) writes ``test-artifacts/chapter-times.json``: the
seconds each notebook took (nbval's cell durations summed, the table printed at the end of the run) and the
machine it ran on. ``update`` copies that measurement into ``docs/chapter-times.json`` (committed) and rewrites
the table between ``<!-- times:begin -->`` and ``<!-- times:end -->`` in ``SYLLABUS.md``; ``check`` fails
when the two disagree or a chapter of ``solutions/`` has no time.

It also estimates each chapter's **study time** from its source (:func:`estimate_study`): the words of its
markdown cells at :data:`READING_WPM` words a minute, the lines of code a learner reads and runs at
:data:`CODE_LINES_PER_MINUTE` a minute, minutes per checked exercise by its kind (:data:`EXERCISE_MINUTES`, the
kind read from the ``**Exercise N (kind)**`` heading above its check) and :data:`PREDICTION_MINUTES` per
prediction cell. ``study`` (and ``update``) writes that table, with each chapter's CPU time beside it, between
``<!-- study:begin -->`` and ``<!-- study:end -->``; ``check`` fails when the table's estimate of a chapter is off
by more than :data:`STUDY_TOLERANCE` (a chapter that changed a lot) or its CPU time is not the committed one.

Usage::

    python -m fftd_course.course.syllabus update [--from test-artifacts/chapter-times.json] [--merge]
                                                 [--note TEXT]
    python -m fftd_course.course.syllabus study      # rewrite the study-time table from the chapters
    python -m fftd_course.course.syllabus check      # exit status 1 and a list if a table is stale
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["BEGIN", "END", "STUDY_BEGIN", "STUDY_END", "SyllabusError", "machine", "artifact", "load_times",
           "update_times", "render", "StudyEstimate", "estimate_study", "render_study", "update_study", "update",
           "check", "main"]

ROOT = Path(__file__).resolve().parents[2]  # the repository (fftd_course/course/ is two down)
BEGIN, END = "<!-- times:begin -->", "<!-- times:end -->"
STUDY_BEGIN, STUDY_END = "<!-- study:begin -->", "<!-- study:end -->"
ARTIFACT = Path("test-artifacts") / "chapter-times.json"
TIMES = Path("docs") / "chapter-times.json"
FOLDERS = ("solutions", "notebooks")
ABOUT = ("Seconds to execute each chapter under `make test` (nbval's cell durations summed per notebook). "
         "Written by `python -m fftd_course.course.syllabus update` from test-artifacts/chapter-times.json; "
         "SYLLABUS.md's table is rendered from this file.")


class SyllabusError(ValueError):
    """A times file or SYLLABUS.md that cannot be read or updated; the message says what to do."""


def machine() -> dict:
    """What the times depend on: CPUs, PyTorch, Python, and the OpenMP wait policy if one was set."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": os.cpu_count(), "cpus_usable": usable, "cpu": cpu or platform.processor() or platform.machine(),
            "system": platform.system(), "python": platform.python_version(), "torch": torch_version,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def artifact(seconds: dict[str, float], failed: set[str] | list[str] = ()) -> dict:
    """The ``test-artifacts/chapter-times.json`` of one test run (``conftest.py`` writes it).

    ``seconds`` maps a notebook's pytest path (``solutions/05_ivqvae.ipynb``) to its summed cell durations;
    ``failed`` lists the notebooks with a failed cell (their times are not a chapter's real time).
    """
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "chapters": {path: round(s, 2) for path, s in sorted(seconds.items())}, "failed": sorted(failed)}


def _chapters(root: Path) -> list[str]:
    from .sources import AssignmentError, chapter_sources  # noqa: PLC0415

    try:
        return [p.stem for p in chapter_sources(root)]
    except AssignmentError as e:
        raise SyllabusError(str(e)) from None


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise SyllabusError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SyllabusError(f"{path} is not valid JSON ({e})") from e


def load_times(root: Path = ROOT) -> dict:
    """``docs/chapter-times.json``: ``measurements`` (date, machine, note) and per chapter its two times."""
    times = _read_json(root / TIMES,
                       "run `make test`, then `make syllabus` (python -m fftd_course.course.syllabus update)")
    for key in ("measurements", "chapters"):
        if key not in times:
            raise SyllabusError(f"{root / TIMES} has no {key!r}: "
                                "rewrite it with `python -m fftd_course.course.syllabus update`")
    return times


def update_times(old: dict | None, run: dict, stems: list[str], merge: bool = False, note: str = "") -> dict:
    """The new ``docs/chapter-times.json`` from the old one and one test run's artifact.

    Every chapter of ``stems`` needs both its times (solution and student notebook) from the run; with
    ``merge`` a chapter the run did not time keeps its committed times and the measurement they came from.
    """
    if run.get("failed"):
        raise SyllabusError(f"the run had failing chapters ({', '.join(run['failed'])}): their times are not "
                            "the chapters' times. Fix them and run `make test` again.")
    measured: dict[str, dict[str, float]] = {}
    for path, seconds in run.get("chapters", {}).items():
        p = Path(path)
        if p.parent.name in FOLDERS and p.suffix == ".ipynb":
            measured.setdefault(p.stem, {})[p.parent.name] = seconds
    complete = {stem: t for stem, t in measured.items() if stem in stems and all(f in t for f in FOLDERS)}
    missing = [s for s in stems if s not in complete]
    old_chapters = (old or {}).get("chapters", {})
    if missing and not merge:
        raise SyllabusError(f"the run did not time both notebooks of {', '.join(missing)}: run the whole "
                            "`make test`, or pass --merge to keep the committed times of those chapters")
    if merge:
        unknown = [s for s in missing if s not in old_chapters]
        if unknown:
            raise SyllabusError(f"no time for {', '.join(unknown)} in the run or in {TIMES}: run them "
                                f"(pytest --nbval-lax solutions/{unknown[0]}.ipynb notebooks/{unknown[0]}.ipynb)")
    measurements: list[dict] = []
    chapters: dict[str, dict] = {}
    renumber: dict[int, int] = {}
    for stem in stems:
        if stem in complete:
            continue
        entry = old_chapters[stem]
        m = entry["measurement"]
        if m not in renumber:
            renumber[m] = len(measurements)
            measurements.append(old["measurements"][m])
        chapters[stem] = dict(entry, measurement=renumber[m])
    if complete:
        new_index = len(measurements)
        measurements.append({"date": run.get("date", ""), "machine": run.get("machine", {}), "note": note})
        for stem, t in complete.items():
            chapters[stem] = {"solutions": t["solutions"], "notebooks": t["notebooks"], "measurement": new_index}
    return {"about": ABOUT, "measurements": measurements, "chapters": {s: chapters[s] for s in stems}}


def _seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


def _describe(m: dict) -> str:
    mach = m.get("machine", {})
    cpus = mach.get("cpus_usable") or mach.get("cpus")
    parts = [f"{cpus} CPU{'s' if cpus != 1 else ''}" + (f" ({mach['cpu']})" if mach.get("cpu") else ""),
             f"PyTorch {mach.get('torch', '?')}", f"Python {mach.get('python', '?')}"]
    if mach.get("omp_wait_policy"):
        parts.append(f"OMP_WAIT_POLICY={mach['omp_wait_policy']}")
    text = f"measured {m.get('date', '')[:10]} on {', '.join(parts)}"
    return text + (f". {m['note'].rstrip('.')}." if m.get("note") else ".")


def render(times: dict) -> str:
    """The markdown table (and the lines saying where its numbers come from) that SYLLABUS.md holds."""
    several = len(times["measurements"]) > 1
    letters = "abcdefghijklmnopqrstuvwxyz"
    head = "| chapter | solution (s) | student notebook (s) |" + (" measured |" if several else "")
    lines = [head, "|---|---:|---:|" + ("---|" if several else "")]
    total = {f: 0.0 for f in FOLDERS}
    for stem, entry in times["chapters"].items():
        name = f"{stem[:2]} {stem[3:].replace('_', ' ')}"
        row = f"| [{name}](notebooks/{stem}.ipynb) | {_seconds(entry['solutions'])} | {_seconds(entry['notebooks'])} |"
        lines.append(row + (f" ({letters[entry['measurement']]}) |" if several else ""))
        for f in FOLDERS:
            total[f] += entry[f]
    lines.append(f"| **all chapters** | **{_seconds(total['solutions'])}** | **{_seconds(total['notebooks'])}** |"
                 + (" |" if several else ""))
    lines.append("")
    for i, m in enumerate(times["measurements"]):
        text = _describe(m)
        prefix = f"({letters[i]}) " if several else ""
        lines.append(f"{prefix}{text[0].upper()}{text[1:]}" + ("  " if several else ""))
    return "\n".join(lines)


# ---- study time: estimated from the chapter's source ---------------------------------------------------------

READING_WPM = 100  # words of markdown a minute: technical prose with equations, read to be understood
CODE_LINES_PER_MINUTE = 10  # lines of given code a minute, read and run (solution blocks excluded)
EXERCISE_MINUTES = {"warm-up": 10, "variant": 20, "predict and measure": 15, "find the bug": 25,
                    "extend or stretch": 30, "other": 15}  # per checked exercise, writing it until its check passes
PREDICTION_MINUTES = 5  # per prediction cell: think, commit to a value, compare it with the measurement
STUDY_TOLERANCE = (0.15, 5)  # check: the table may be off by 15% or 5 minutes, whichever is larger

_EXERCISE_HEADING = re.compile(r"\*\*Exercise\s+\d+\s*(?:\(([^)]*)\))?")
_CHECK_CALL = re.compile(r"^checks\.check_\w+\(", re.M)  # a graded check cell: one per exercise
_PREDICTION = re.compile(r"^(?:def\s+predicted_\w+\s*\(|prediction\w*\s*=)", re.M)
_WORD = re.compile(r"\S*[A-Za-z0-9]\S*")


@dataclass
class StudyEstimate:
    """What :func:`estimate_study` counted in one chapter, and the minutes it makes."""

    stem: str
    words: int
    code_lines: int
    exercises: dict[str, int] = field(default_factory=dict)  # kind -> number of checked exercises
    predictions: int = 0

    @property
    def reading_minutes(self) -> float:
        return self.words / READING_WPM + self.code_lines / CODE_LINES_PER_MINUTE

    @property
    def exercise_minutes(self) -> float:
        return (sum(EXERCISE_MINUTES[k] * n for k, n in self.exercises.items())
                + PREDICTION_MINUTES * self.predictions)

    @property
    def minutes(self) -> int:
        """Reading and exercises together, rounded to 5 minutes."""
        return int(5 * round((self.reading_minutes + self.exercise_minutes) / 5))


def exercise_kind(heading: str | None) -> str:
    """The kind of an exercise from its heading's parenthesis ("find the bug", "a variant: ...", ...)."""
    text = (heading or "").lower()
    for words, kind in ((("stretch", "extend"), "extend or stretch"), (("bug",), "find the bug"),
                        (("predict",), "predict and measure"), (("variant",), "variant"), (("warm-up",), "warm-up")):
        if any(w in text for w in words):
            return kind
    return "other"


def _cells(text: str) -> list[tuple[str, list[str]]]:
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    return cells


def estimate_study(path: Path) -> StudyEstimate:
    """Count what a learner reads and does in the chapter ``solutions/NN_name.py`` (jupytext percent format)."""
    words = code_lines = predictions = 0
    exercises: dict[str, int] = {}
    kind = "other"
    for cell_type, lines in _cells(path.read_text(encoding="utf-8")):
        if cell_type == "markdown":
            text = "\n".join(re.sub(r"^#\s?", "", line) for line in lines)
            words += len(_WORD.findall(text))
            headings = _EXERCISE_HEADING.findall(text)
            if headings:
                kind = exercise_kind(headings[-1])
            continue
        source, inside = "\n".join(lines), False
        for line in lines:
            stripped = line.strip()
            if stripped in ("### BEGIN SOLUTION", "### END SOLUTION"):
                inside = stripped.startswith("### BEGIN")
            elif stripped and not stripped.startswith("#") and not inside:
                code_lines += 1
        predictions += len(_PREDICTION.findall(source))
        if _CHECK_CALL.search(source):
            exercises[kind] = exercises.get(kind, 0) + 1
    return StudyEstimate(path.stem, words, code_lines, exercises, predictions)


def _duration(minutes: float) -> str:
    hours, rest = divmod(int(minutes), 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"


def _parse_duration(text: str) -> int | None:
    m = re.fullmatch(r"\s*(?:(\d+) h )?(\d+) min\s*", text)
    return None if m is None else 60 * int(m.group(1) or 0) + int(m.group(2))


def render_study(root: Path, times: dict | None = None) -> str:
    """The study-time table of SYLLABUS.md (with each chapter's CPU time beside it) and how it was estimated."""
    kinds = ", ".join(f"{k} {v} min" for k, v in EXERCISE_MINUTES.items())
    lines = [f"Estimated from each chapter's source by `fftd_course.course.syllabus`: its markdown at {READING_WPM} "
             f"words a minute, the code it gives at {CODE_LINES_PER_MINUTE} lines a minute (reading and running it; "
             f"exercise answers not counted), each checked exercise by its kind ({kinds}) and {PREDICTION_MINUTES} "
             "min per prediction you write down, rounded to 5 minutes. A first estimate for a learner who knows "
             "PyTorch; the CPU time is the machine's (below).",
             "",
             "| chapter | words | code lines | checked exercises | predictions | study time | CPU time (s) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    total = 0
    for path in _chapter_paths(root):
        e = estimate_study(path)
        total += e.minutes
        name = f"{path.stem[:2]} {path.stem[3:].replace('_', ' ')}"
        done = ", ".join(f"{n} {k}" for k, n in e.exercises.items()) or "none"
        cpu = (times or {}).get("chapters", {}).get(path.stem)
        lines.append(f"| [{name}](notebooks/{path.stem}.ipynb) | {e.words:,} | {e.code_lines:,} | "
                     f"{sum(e.exercises.values())}: {done} | {e.predictions} | {_duration(e.minutes)} | "
                     f"{_seconds(cpu['solutions']) if cpu else '-'} |")
    lines.append(f"| **all chapters** | | | | | **{_duration(total)}** | |")
    return "\n".join(lines)


def _chapter_paths(root: Path) -> list[Path]:
    from .sources import AssignmentError, chapter_sources  # noqa: PLC0415

    try:
        return chapter_sources(root)
    except AssignmentError as e:
        raise SyllabusError(str(e)) from None


def _study_problems(inside: str, root: Path, times: dict) -> list[str]:
    """Rows of the study table that no longer fit their chapter (see :data:`STUDY_TOLERANCE`)."""
    rows = {}
    for line in inside.splitlines():
        m = re.match(r"\| \[[^\]]*\]\(notebooks/([^)]+)\.ipynb\) \|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    problems = []
    share, floor = STUDY_TOLERANCE
    for path in _chapter_paths(root):
        row = rows.get(path.stem)
        if row is None:
            problems.append(f"SYLLABUS.md: the study-time table has no row for {path.stem}")
            continue
        said, now = _parse_duration(row[-2]), estimate_study(path).minutes
        if said is None or abs(said - now) > max(floor, share * now):
            problems.append(f"SYLLABUS.md: {path.stem}'s study time says {row[-2]}, the chapter now makes "
                            f"{_duration(now)}")
        cpu = times["chapters"].get(path.stem)
        if cpu and row[-1] != _seconds(cpu["solutions"]):
            problems.append(f"SYLLABUS.md: {path.stem}'s CPU time in the study-time table differs from {TIMES}")
    return problems


def update_study(root: Path = ROOT) -> None:
    """Rewrite SYLLABUS.md's study-time table from the chapters (and the committed CPU times)."""
    syllabus = root / "SYLLABUS.md"
    if not syllabus.exists():
        raise SyllabusError(f"{syllabus} is missing")
    times = load_times(root) if (root / TIMES).exists() else None
    before, _, after = _split(syllabus.read_text(encoding="utf-8"), syllabus, STUDY_BEGIN, STUDY_END)
    syllabus.write_text(f"{before}{STUDY_BEGIN}\n{render_study(root, times)}\n{STUDY_END}{after}", encoding="utf-8")


def _split(text: str, path: Path, begin: str = BEGIN, end: str = END) -> tuple[str, str, str]:
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SyllabusError(f"{path} must hold the marker lines {begin} and {end} once each, in that order")
    before, rest = text.split(begin)
    inside, after = rest.split(end)
    return before, inside, after


def update(root: Path = ROOT, source: Path | None = None, merge: bool = False, note: str = "") -> dict:
    """Copy a test run's times into ``docs/chapter-times.json`` and SYLLABUS.md's table; returns the new times."""
    source = source or root / ARTIFACT
    run = _read_json(source, "run `make test` first: it writes the chapter times there")
    old = load_times(root) if (root / TIMES).exists() else None
    times = update_times(old, run, _chapters(root), merge, note)
    syllabus = root / "SYLLABUS.md"
    if not syllabus.exists():
        raise SyllabusError(f"{syllabus} is missing")
    before, _, after = _split(syllabus.read_text(encoding="utf-8"), syllabus)
    (root / TIMES).write_text(json.dumps(times, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    syllabus.write_text(f"{before}{BEGIN}\n{render(times)}\n{END}{after}", encoding="utf-8")
    if STUDY_BEGIN in syllabus.read_text(encoding="utf-8"):
        update_study(root)  # its CPU column follows the new times
    return times


def check(root: Path = ROOT) -> list[str]:
    """Every way SYLLABUS.md's table and ``docs/chapter-times.json`` disagree with each other or the chapters."""
    problems = []
    times = load_times(root)
    stems = _chapters(root)
    absent = [s for s in stems if s not in times["chapters"]]
    if absent:
        problems.append(f"{TIMES}: no time for {', '.join(absent)}")
    gone = [s for s in times["chapters"] if s not in stems]
    if gone:
        problems.append(f"{TIMES}: times for chapters that are not in solutions/: {', '.join(gone)}")
    syllabus = root / "SYLLABUS.md"
    if not syllabus.exists():
        return problems + ["SYLLABUS.md is missing"]
    text = syllabus.read_text(encoding="utf-8")
    _, inside, _ = _split(text, syllabus)
    if inside.strip() != render(times).strip():
        problems.append(f"SYLLABUS.md: the times table differs from the rendering of {TIMES}")
    if STUDY_BEGIN in text or STUDY_END in text:
        problems += _study_problems(_split(text, syllabus, STUDY_BEGIN, STUDY_END)[1], root, times)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fftd_course.course.syllabus",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["update", "study", "check"],
                        help="update: copy a test run's times into docs/ and SYLLABUS.md; study: rewrite the "
                             "study-time table from the chapters; check: list what is stale")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help=f"the test run's times (default: {ARTIFACT})")
    parser.add_argument("--merge", action="store_true",
                        help="keep the committed times of chapters the run did not time")
    parser.add_argument("--note", default="", help="a sentence saying how the run was made, shown under the table")
    parser.add_argument("--root", type=Path, default=None,
                        help="course repository (default: the current folder if it has solutions/, else this package's)")
    args = parser.parse_args(argv)
    from .sources import course_root, report_problems  # noqa: PLC0415 (jupytext only when run)

    root = course_root(args.root)
    try:
        if args.command == "update":
            times = update(root, args.source, args.merge, args.note)
            print(f"wrote {TIMES} and SYLLABUS.md's table ({len(times['chapters'])} chapters)")
            return 0
        if args.command == "study":
            update_study(root)
            print("wrote SYLLABUS.md's study-time table")
            return 0
        problems = check(root)
    except SyllabusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return report_problems(problems, "SYLLABUS.md is up to date",
                           "run `make syllabus` (python -m fftd_course.course.syllabus update)")


if __name__ == "__main__":
    sys.exit(main())
