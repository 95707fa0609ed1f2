"""The chapters' sources: where they are, and how a solution chapter's text becomes a student notebook.

:func:`chapter_sources` lists ``solutions/NN_name.py``; :func:`course_root` finds the course repository.
:func:`strip_solutions` replaces every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` block with a stub,
:func:`canonical_text` puts a chapter in jupytext's canonical form and :func:`to_notebook` writes its ``.ipynb``
with nbgrader's metadata (:func:`grading_metadata`). Releasing (:mod:`.assignments`), grading
(:mod:`.grading`), the site (:mod:`.site`) and the syllabus (:mod:`.syllabus`) all build on this module, which
imports none of them, so that none of them has to import another for these pieces.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import JupytextConfiguration, load_jupytext_configuration_file

__all__ = ["BEGIN", "END", "STUB", "ROOT", "AssignmentError", "strip_solutions", "canonical_text", "grading_metadata",
           "to_notebook", "chapter_sources", "course_root"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", 'raise NotImplementedError("Exercise: write your code here, then run the check cell below.")')

ROOT = Path(__file__).resolve().parents[2]  # the repository this package sits in (fftd_course/course/ is two down)

CHECK_CALL = re.compile(r"^checks\.(check_\w+)\(", re.M)  # a graded check: a top-level call in a code cell
DEFINITION = re.compile(r"^[ \t]*(?:def|class)[ \t]+(\w+)", re.M)


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


def grading_metadata(source: str, where: str = "<cell>") -> dict | None:
    """nbgrader's metadata for a code cell: an answer cell, a graded check cell, or ``None``.

    An answer cell holds a solution block (or, in a student notebook, its stub) and is named after the
    first function or class it defines; a check cell calls ``checks.check_<name>(...)`` at its top level
    (indented calls, e.g. under ``with checks.lenient():``, are demonstrations, not graded).
    """
    checks = CHECK_CALL.findall(source)
    is_answer = any(line.strip() in (BEGIN, STUB[1]) for line in source.splitlines())
    if is_answer and checks:
        raise AssignmentError(f"{where}: an exercise and its graded check must sit in separate cells")
    if is_answer:
        names = DEFINITION.findall(source)
        if not names:
            raise AssignmentError(f"{where}: a solution block must sit inside a function or class the cell defines")
        return {"nbgrader": {"grade": False, "grade_id": f"answer_{names[0]}", "locked": False,
                             "schema_version": 3, "solution": True, "task": False}}
    if len(checks) > 1:
        raise AssignmentError(f"{where}: one graded check per cell, found {', '.join(checks)}")
    if checks:
        return {"deletable": False, "editable": False,  # JupyterLab keeps learners from changing the check
                "nbgrader": {"grade": True, "grade_id": checks[0], "locked": True, "points": 1,
                             "schema_version": 3, "solution": False, "task": False}}
    return None


def to_notebook(text: str, name: str, root: Path = ROOT) -> str:
    """The ``.ipynb`` JSON for percent-format ``text``: no outputs, cell ids derived from ``name``, nbgrader metadata."""
    config = _config(root)
    nb = jupytext.reads(text, fmt="py:percent", config=config)
    seen: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        cell["id"] = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:12]
        meta = grading_metadata(cell.source, f"{name}, cell {i}") if cell.cell_type == "code" else None
        if meta:
            grade_id = meta["nbgrader"]["grade_id"]
            if grade_id in seen:
                raise AssignmentError(f"{name}: cells {seen[grade_id]} and {i} are both {grade_id!r}; "
                                      "nbgrader needs one cell per exercise and per check")
            seen[grade_id] = i
            cell.metadata.update(meta)
    jupytext_text = jupytext.writes(nb, fmt="ipynb", config=config)
    nbformat.validate(nbformat.reads(jupytext_text, as_version=4))
    return jupytext_text


def chapter_sources(root: Path = ROOT) -> list[Path]:
    """``solutions/NN_name.py`` of every chapter, in order (release, grading, the site and the syllabus use it)."""
    solutions = sorted((root / "solutions").glob("[0-9][0-9]_*.py"))
    if not solutions:
        raise AssignmentError(f"no chapters found in {root / 'solutions'} (expected files named NN_name.py)")
    return solutions


def course_root(given: Path | None = None) -> Path:
    """``given``, else the current folder if it holds ``solutions/``, else the repository this package sits in."""
    return given or (Path.cwd() if (Path.cwd() / "solutions").is_dir() else ROOT)


def report_problems(problems: list, ok: str, fix: str) -> int:
    """A ``check`` command's tail: each problem on a line, then ``ok`` or how many and ``fix``; exit status 1 if any."""
    for p in problems:
        print(p)
    print(ok if not problems else f"{len(problems)} problem(s): {fix}")
    return 1 if problems else 0
