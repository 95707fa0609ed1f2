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

Usage::

    python -m fftd_course.assignments release   # what `make release` runs
    python -m fftd_course.assignments check     # exit status 1 and a list if anything is stale
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import JupytextConfiguration, load_jupytext_configuration_file

__all__ = ["BEGIN", "END", "AssignmentError", "strip_solutions", "canonical_text", "to_notebook", "planned_files",
           "release", "check", "main"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", 'raise NotImplementedError("Exercise: write your code here, then run the check cell below.")')

ROOT = Path(__file__).resolve().parent.parent


class AssignmentError(ValueError):
    """A solution file whose markers cannot be turned into a student notebook."""


def _config(root: Path) -> JupytextConfiguration:
    # The same settings JupyterLab's jupytext extension reads, so that saving in the lab changes nothing.
    path = root / "jupytext.toml"
    if not path.exists():
        raise AssignmentError(f"{path} is missing: the pairing settings live there")
    return load_jupytext_configuration_file(str(path))


def strip_solutions(text: str, source: str = "<text>") -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` block with a stub at its indentation."""
    out: list[str] = []
    begin_line = None
    indent = ""
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin_line is not None:
                raise AssignmentError(f"{source}:{number}: {BEGIN} inside the block opened on line {begin_line}")
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise AssignmentError(f"{source}:{number}: solution blocks must sit inside a function or class body "
                                      "(indented), so that the student's stub raises only when it is called")
            begin_line = number
            out.extend(f"{indent}{stub}\n" for stub in STUB)
        elif marker == END:
            if begin_line is None:
                raise AssignmentError(f"{source}:{number}: {END} without a {BEGIN} before it")
            if line[: len(line) - len(line.lstrip())] != indent:
                raise AssignmentError(f"{source}:{number}: {END} is not indented like its {BEGIN} on line {begin_line}")
            begin_line = None
        elif begin_line is None:
            out.append(line)
    if begin_line is not None:
        raise AssignmentError(f"{source}:{begin_line}: {BEGIN} is never closed by {END}")
    return "".join(out)


def canonical_text(text: str, root: Path = ROOT) -> str:
    """``text`` as jupytext writes it back (header, spacing): the form the ``.py`` files are kept in."""
    config = _config(root)
    return jupytext.writes(jupytext.reads(text, fmt="py:percent", config=config), fmt="py:percent", config=config)


def to_notebook(text: str, name: str, root: Path = ROOT) -> str:
    """The ``.ipynb`` JSON for percent-format ``text``: no outputs, cell ids derived from ``name``."""
    config = _config(root)
    nb = jupytext.reads(text, fmt="py:percent", config=config)
    for i, cell in enumerate(nb.cells):
        cell["id"] = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:12]
    jupytext_text = jupytext.writes(nb, fmt="ipynb", config=config)
    nbformat.validate(nbformat.reads(jupytext_text, as_version=4))
    return jupytext_text


@dataclass(frozen=True)
class Planned:
    path: Path
    text: str


def planned_files(root: Path = ROOT) -> list[Planned]:
    """Every file a release writes, with the text it should hold."""
    solutions = sorted((root / "solutions").glob("[0-9][0-9]_*.py"))
    if not solutions:
        raise AssignmentError(f"no chapters found in {root / 'solutions'} (expected files named NN_name.py)")
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


def release(root: Path = ROOT) -> list[Path]:
    """Write every planned file whose content differs; return the paths written."""
    written = []
    for item in planned_files(root):
        if _current(item.path) != item.text:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            item.path.write_text(item.text, encoding="utf-8")
            written.append(item.path)
    return written


def check(root: Path = ROOT) -> list[str]:
    """Every way the repository differs from a fresh release (empty when all is in sync)."""
    problems = []
    for item in planned_files(root):
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
    expected = {item.path for item in planned_files(root)}
    for folder in ("notebooks", "solutions"):
        for path in sorted((root / folder).glob("[0-9][0-9]_*.*")):
            if path.suffix in (".py", ".ipynb") and path not in expected:
                problems.append(f"{path.relative_to(root)}: has no solution to come from (delete it or add solutions/{path.stem}.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fftd_course.assignments", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["release", "check"], help="release: write student notebooks; check: list what is stale")
    parser.add_argument("--root", type=Path, default=None, help="course repository (default: the one this package sits in, or the current folder)")
    args = parser.parse_args(argv)
    root = args.root or (Path.cwd() if (Path.cwd() / "solutions").is_dir() else ROOT)
    try:
        if args.command == "release":
            written = release(root)
            for path in written:
                print(f"wrote {path.relative_to(root)}")
            print(f"release: {len(written)} file(s) changed")
            return 0
        problems = check(root)
    except AssignmentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print("in sync" if not problems else f"{len(problems)} problem(s): run `make release` (python -m fftd_course.assignments release)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
