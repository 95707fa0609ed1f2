"""Turn solution chapters into student notebooks, and check that every pair is in sync.

``solutions/NN_name.py`` (jupytext percent format) is the only file an author edits. Exercise
answers sit between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers), always
inside a function or class body. ``release`` writes:

* ``solutions/NN_name.py`` in jupytext's canonical form (a no-op for a file already canonical),
* ``solutions/NN_name.ipynb`` paired with it,
* ``notebooks/NN_name.py``: the same text with every marked block replaced by a stub that raises
  ``NotImplementedError`` (the check cells report it as "not attempted yet"),
* ``notebooks/NN_name.ipynb`` paired with that.

Notebooks carry no outputs and deterministic cell ids, so releasing twice gives no diff. ``check``
rewrites nothing and lists every file that a release would change (a stale student notebook, a
``.ipynb`` that differs from its ``.py``), comparing contents, never file times.

**A learner's work is never overwritten.** ``notebooks/.release-manifest.json`` holds the SHA-256 of
every student file as release last wrote it. A student notebook whose ``.py`` or ``.ipynb`` differs
from that (a learner wrote an answer, or ran it and saved the outputs) is left alone and reported;
``--force`` replaces it after copying both files to ``backups/<time>/notebooks/``.

Every ``.ipynb`` carries nbgrader's cell metadata: a cell with a solution block (or its stub) is an
answer cell ``answer_<name>``, a cell calling ``checks.check_<name>(...)`` at its top level is a graded,
locked test cell ``check_<name>`` worth one point (learners cannot edit or delete it in JupyterLab).
``python -m fftd_course.course.assignments grade`` (see :mod:`fftd_course.course.grading`) scores
submissions from these cells; an instructor who uses nbgrader can run ``generate_assignment`` / ``autograde``
on ``solutions/`` instead (with ``FFTD_GRADING=1``, so that a check that does not pass raises).

The text-to-notebook pieces (:func:`strip_solutions`, :func:`canonical_text`, :func:`to_notebook`,
:func:`chapter_sources`, ...) live in :mod:`fftd_course.course.sources`, shared with the grader, and are
re-exported here; this module adds the release itself, its manifest and the command line.

Usage::

    python -m fftd_course.course.assignments release [--force]   # what `make release` runs
    python -m fftd_course.course.assignments check               # exit status 1 and a list if anything is stale
    python -m fftd_course.course.assignments grade SUBMISSION... [--csv FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import grading
# The chapters' text -> notebook pieces live in .sources (the grader uses them too); they are re-exported here.
from .sources import (BEGIN, END, ROOT, AssignmentError, canonical_text, chapter_sources, course_root,
                      grading_metadata, report_problems, strip_solutions, to_notebook)

__all__ = ["BEGIN", "END", "MANIFEST", "AssignmentError", "strip_solutions", "canonical_text", "grading_metadata",
           "to_notebook", "chapter_sources", "course_root", "planned_files", "Release", "release", "check", "main"]

MANIFEST = Path("notebooks") / ".release-manifest.json"  # relative to the course root


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str


def planned_files(root: Path = ROOT) -> list[Planned]:
    """Every file a release writes, with the text it should hold."""
    solutions = chapter_sources(root)
    planned = []
    for sol in solutions:
        solution = canonical_text(sol.read_text(encoding="utf-8"), root)
        student = canonical_text(strip_solutions(solution, str(sol)), root)
        stu = root / "notebooks" / sol.name
        planned += [
            Planned(sol, solution),
            Planned(sol.with_suffix(".ipynb"), to_notebook(solution, f"solutions/{sol.stem}", root)),
            Planned(stu, student),
            Planned(stu.with_suffix(".ipynb"), to_notebook(student, f"notebooks/{sol.stem}", root)),
        ]
    return planned


def _current(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_manifest(root: Path) -> dict[str, str]:
    path = root / MANIFEST
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise AssignmentError(f"{path} is damaged ({e}); restore it with git (git checkout -- {MANIFEST})") from None


def _manifest_text(hashes: dict[str, str]) -> str:
    return json.dumps({"about": "SHA-256 of each student notebook as `make release` last wrote it: a file that differs "
                                "holds a learner's work, which release leaves alone unless --force (a backup is kept).",
                       "sha256": dict(sorted(hashes.items()))}, indent=1) + "\n"


@dataclass
class Release:
    """What :func:`release` did: files written, student notebooks kept because they hold edits, backups made."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)


def _student_key(path: Path) -> str | None:
    # The manifest names student files by their name inside notebooks/.
    return path.name if path.parent.name == "notebooks" else None


def release(root: Path = ROOT, force: bool = False) -> Release:
    """Write every planned file whose content differs, except student notebooks that hold a learner's edits.

    A chapter's student pair (``.py`` and ``.ipynb``) is edited when either file differs from what the last
    release wrote (the manifest); both are then kept as they are (listed in ``Release.kept``), unless
    ``force``, which first copies them to ``backups/<time>/notebooks/`` (``Release.backups``).
    """
    manifest = _read_manifest(root)
    planned = planned_files(root)
    edited: set[str] = set()  # chapter stems whose student pair holds edits
    for item in planned:
        key = _student_key(item.path)
        current = _current(item.path)
        if key and current is not None and current != item.text and manifest.get(key) != _sha(current):
            edited.add(item.path.stem)
    result = Release()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for item in planned:
        key = _student_key(item.path)
        current = _current(item.path)
        if current == item.text:
            if key:
                manifest[key] = _sha(current)
            continue
        if key and item.path.stem in edited:
            if not force:
                result.kept.append(item.path)
                continue
            backup = root / "backups" / stamp / "notebooks" / item.path.name
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.path, backup)
            result.backups.append(backup)
        item.path.parent.mkdir(parents=True, exist_ok=True)
        item.path.write_text(item.text, encoding="utf-8")
        result.written.append(item.path)
        if key:
            manifest[key] = _sha(item.text)
    manifest_path = root / MANIFEST
    if _current(manifest_path) != _manifest_text(manifest):
        manifest_path.write_text(_manifest_text(manifest), encoding="utf-8")
        result.written.append(manifest_path)
    return result


def check(root: Path = ROOT) -> list[str]:
    """Every way the repository differs from a fresh release (empty when all is in sync)."""
    planned = planned_files(root)
    hashes = _read_manifest(root)
    problems = []
    for item in planned:
        current = _current(item.path)
        rel = item.path.relative_to(root)
        if current is None:
            problems.append(f"{rel}: missing")
        elif current != item.text:
            if item.path.parent.name == "notebooks":
                why = "stale: it no longer matches its solution" if item.path.suffix == ".py" else "differs from its .py"
            else:
                why = "not in jupytext's canonical form" if item.path.suffix == ".py" else "differs from its .py"
            problems.append(f"{rel}: {why}")
        key = _student_key(item.path)
        if key and hashes.get(key) != _sha(item.text):
            problems.append(f"{MANIFEST}: does not record {key} as released")
    expected = {item.path for item in planned}
    for folder in ("notebooks", "solutions"):
        for path in sorted((root / folder).glob("[0-9][0-9]_*.*")):
            if path.suffix in (".py", ".ipynb") and path not in expected:
                problems.append(f"{path.relative_to(root)}: has no solution to come from (delete it or add solutions/{path.stem}.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fftd_course.course.assignments", description=__doc__.split("\n\n")[0])
    root_help = "course repository (default: the current folder if it has solutions/, else the one this package sits in)"
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("release", help="write student notebooks (never over a learner's edits without --force)",
                       description="Regenerate solutions/*.ipynb and the student notebooks in notebooks/. A student "
                                   "notebook that holds a learner's edits is left alone and reported.")
    p.add_argument("--force", action="store_true",
                   help="also replace student notebooks holding edits, after copying them to backups/<time>/notebooks/")
    p.add_argument("--root", type=Path, default=None, help=root_help)
    p = sub.add_parser("check", help="list every file a release would change (exit status 1 if any)")
    p.add_argument("--root", type=Path, default=None, help=root_help)
    grading.add_arguments(sub.add_parser("grade", help="run submitted notebooks in fresh kernels and score each exercise",
                                         description=grading.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    if args.command == "grade":
        return grading.run(args)
    root = course_root(args.root)
    try:
        if args.command == "release":
            done = release(root, force=args.force)
            for path in done.backups:
                print(f"backed up {path.relative_to(root)}")
            for path in done.written:
                print(f"wrote {path.relative_to(root)}")
            for path in done.kept:
                print(f"kept {path.relative_to(root)}: it holds changes made after the last release (a learner's work?)")
            print(f"release: {len(done.written)} file(s) changed" + (f", {len(done.kept)} edited student file(s) left "
                  "alone; `make release FORCE=1` (--force) replaces them after a backup" if done.kept else ""))
            return 0
        problems = check(root)
    except AssignmentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return report_problems(problems, "in sync",
                           "run `make release` (python -m fftd_course.course.assignments release)")


if __name__ == "__main__":
    sys.exit(main())
