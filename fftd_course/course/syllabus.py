"""SYLLABUS.md's table of chapter times, kept equal to the measurement in ``docs/chapter-times.json``.

Every ``pytest`` run that executes chapters (``make test``) writes ``test-artifacts/chapter-times.json``: the
seconds each notebook took (nbval's cell durations summed, the table printed at the end of the run) and the
machine it ran on. ``update`` copies that measurement into ``docs/chapter-times.json`` (committed) and rewrites
the table between ``<!-- times:begin -->`` and ``<!-- times:end -->`` in ``SYLLABUS.md``; ``check`` fails
when the two disagree or a chapter of ``solutions/`` has no time.

Usage::

    python -m fftd_course.course.syllabus update [--from test-artifacts/chapter-times.json] [--merge]
                                                 [--note TEXT]
    python -m fftd_course.course.syllabus check      # exit status 1 and a list if the table is stale
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["BEGIN", "END", "SyllabusError", "machine", "artifact", "load_times", "update_times", "render",
           "update", "check", "main"]

ROOT = Path(__file__).resolve().parents[2]  # the repository (fftd_course/course/ is two down)
BEGIN, END = "<!-- times:begin -->", "<!-- times:end -->"
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


def _split(text: str, path: Path) -> tuple[str, str, str]:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SyllabusError(f"{path} must hold the marker lines {BEGIN} and {END} once each, in that order")
    before, rest = text.split(BEGIN)
    inside, after = rest.split(END)
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
    _, inside, _ = _split(syllabus.read_text(encoding="utf-8"), syllabus)
    if inside.strip() != render(times).strip():
        problems.append(f"SYLLABUS.md: the times table differs from the rendering of {TIMES}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fftd_course.course.syllabus",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["update", "check"],
                        help="update: copy a test run's times into docs/ and SYLLABUS.md; check: list what is stale")
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
        problems = check(root)
    except SyllabusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return report_problems(problems, "SYLLABUS.md is up to date",
                           "run `make syllabus` (python -m fftd_course.course.syllabus update)")


if __name__ == "__main__":
    sys.exit(main())
