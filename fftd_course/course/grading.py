"""Grade submitted student notebooks: run each in a fresh kernel and score every exercise.

Usage::

    python -m fftd_course.course.assignments grade submissions/*/03_vector_quantization.ipynb --csv scores.csv

A submission is a chapter notebook a learner worked in, ``NN_name.ipynb`` or its jupytext pair
``NN_name.py``; the chapter number in the file name says which chapter it is. The learner is the name
of the folder that holds the file (``submissions/alice/03_vector_quantization.ipynb`` is alice's).

How a submission is scored (one point per graded check cell, as in nbgrader):

1. The grader reads the file; it never imports or runs it. It finds each graded check cell of the
   chapter (nbgrader's ``grade_id``, or for a ``.py`` the same code). A check cell that is gone, or
   whose code differs from the released one, scores 0: "check cell deleted" / "check cell edited".
2. The notebook runs in a fresh Jupyter kernel of this Python, in an empty temporary folder, cell by
   cell with a per-cell timeout. A cell that raises is reported and the run goes on; a cell that runs
   past the timeout is interrupted ("timed out": an endless loop), and if the kernel does not answer
   after that, or dies, the exercises after it score 0 ("not run").
3. Each check cell runs as released. Code the grader appends to that cell then confirms that the
   check it called is the course's own (the same compiled code as this installation's
   ``fftd_course.checks``, and likewise every helper it calls: a redefined check scores 0, "check
   function replaced") and prints the verdict tagged with a token drawn for this run. Only tagged
   verdicts count; a check that printed nothing tagged (it raised) scores 0 with the error.

This catches the ways a notebook goes wrong by accident or by a quick shortcut. It is not a sandbox:
a submission's code runs with your rights, so grade work from people you do not trust in a container.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import inspect
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .sources import canonical_text, chapter_sources, course_root, strip_solutions, to_notebook

__all__ = ["ExerciseScore", "SubmissionReport", "reference_checks", "grade_submission", "grade", "add_arguments", "run"]

STATUSES = ("pass", "fail", "not attempted", "raised", "timed out", "check cell edited", "check cell deleted",
            "check function replaced", "not run")
KERNEL_ENV = {"FFTD_STATIC_PLOTS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
KERNEL_ENV_DROP = ("FFTD_STRICT_CHECKS", "FFTD_GRADING")  # a failed check must print its verdict, not raise


@dataclass
class ExerciseScore:
    """One graded check of one submission."""

    learner: str
    submission: str
    chapter: str
    exercise: str
    points: float
    max_points: float
    status: str
    reason: str = ""


@dataclass
class SubmissionReport:
    """Every exercise of one submission, and what went wrong outside the checks (``notes``)."""

    learner: str
    submission: str
    chapter: str
    scores: list[ExerciseScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def points(self) -> float:
        return sum(s.points for s in self.scores)

    @property
    def max_points(self) -> float:
        return sum(s.max_points for s in self.scores)

    def add_score(self, exercise: str, points: float, status: str, reason: str = "") -> None:
        """Record ``exercise`` (worth ``points``) with ``status``; it earns its points only when it passed."""
        self.scores.append(ExerciseScore(self.learner, self.submission, self.chapter, exercise,
                                         points if status == "pass" else 0.0, points, status, reason))


# ---- the released check cells ----------------------------------------------------------------------------------

def _chapter_of(path: Path, root: Path) -> Path:
    chapters = chapter_sources(root)
    m = re.match(r"(\d\d)_", path.name)
    solutions = [p for p in chapters if m and p.name.startswith(m.group(1) + "_")]
    if not solutions:
        known = ", ".join(p.stem for p in chapters)
        raise ValueError(f"{path}: cannot tell which chapter this is; name the file like its chapter (NN_name.ipynb "
                         f"or NN_name.py, one of: {known})")
    return solutions[0]


def reference_checks(solution: Path, root: Path) -> list[tuple[str, str, float]]:
    """``(grade_id, source, points)`` of every graded check cell, as released to students."""
    student = canonical_text(strip_solutions(solution.read_text(encoding="utf-8"), str(solution)), root)
    nb = nbformat.reads(to_notebook(student, f"notebooks/{solution.stem}", root), as_version=4)
    return [(c.metadata["nbgrader"]["grade_id"], c.source, float(c.metadata["nbgrader"]["points"]))
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def _read_submission(path: Path) -> nbformat.NotebookNode:
    if path.suffix == ".py":
        import jupytext  # noqa: PLC0415

        return jupytext.reads(path.read_text(encoding="utf-8"), fmt="py:percent")  # parsed, not run
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    raise ValueError(f"{path}: a submission is a chapter's .ipynb or its jupytext .py")


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _locate(cells: list, grade_id: str, source: str) -> tuple[int | None, str | None]:
    """Index of the submission's check cell ``grade_id``, or ``None`` with why it does not count."""
    code = [(i, c) for i, c in enumerate(cells) if c.cell_type == "code"]
    for i, c in code:
        if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return (i, None) if _norm(c.source) == _norm(source) else (None, "check cell edited")
    for i, c in code:  # a .py (no metadata) or a notebook whose metadata was lost: the released code itself
        if _norm(c.source) == _norm(source):
            return i, None
    return None, "check cell deleted"


# ---- what runs inside the kernel -------------------------------------------------------------------------------

def _code_digest(code) -> str:
    """A digest of compiled code that is the same in every process (marshal's bytes are not: they track refcounts)."""
    import hashlib as _h

    def parts(c):
        yield c.co_code
        yield repr((c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars, c.co_argcount, c.co_kwonlyargcount)).encode()
        for k in c.co_consts:
            if hasattr(k, "co_code"):
                yield from parts(k)
            elif isinstance(k, frozenset):
                yield repr(sorted(map(repr, k))).encode()  # set order follows string hashing, random per process
            else:
                yield repr(k).encode()

    h = _h.sha256()
    for p in parts(code):
        h.update(p)
    return h.hexdigest()


def _names_used(code) -> set[str]:
    names = set(code.co_names)
    for k in code.co_consts:
        if hasattr(k, "co_code"):
            names |= _names_used(k)
    return names


def _expected_digests(check_name: str, depth: int = 3) -> dict[str, str]:
    """``{path: digest}`` of a check and the course functions it reaches through its globals (``a.b`` = b in a's)."""
    from .. import checks  # noqa: PLC0415 (the grader's own, trusted copy)

    out: dict[str, str] = {}

    def visit(path: str, fn: types.FunctionType, level: int) -> None:
        out[path] = _code_digest(fn.__code__)
        if level == depth:
            return
        for name in sorted(_names_used(fn.__code__)):
            g = fn.__globals__.get(name)
            if isinstance(g, types.FunctionType) and g.__module__.startswith("fftd_course.checks"):
                visit(f"{path}.{name}", g, level + 1)

    fn = getattr(checks, check_name, None)
    if not isinstance(fn, types.FunctionType):
        raise ValueError(f"fftd_course.checks has no function {check_name}: is this installation older than the chapter?")
    visit(check_name, fn, 0)
    return out


_VERDICT = '''
def {fn}(result, checks_module, expected, token):
    import json, types
    {digest}
    genuine, why = True, ""
    for path, want in expected.items():
        names = path.split(".")
        obj = getattr(checks_module, names[0], None)
        for name in names[1:]:
            obj = getattr(obj, "__globals__", {{}}).get(name)
        if not isinstance(obj, types.FunctionType) or _code_digest(obj.__code__) != want:
            genuine, why = False, path
            break
    ok_type = type(result).__name__ == "CheckResult" and type(result).__module__ == "fftd_course.checks.core"
    verdict = {{"genuine": genuine, "why": why, "status": getattr(result, "status", None) if ok_type else None,
               "message": str(getattr(result, "message", ""))[:2000] if ok_type else ""}}
    print(token + json.dumps(verdict))
'''


def _instrument(source: str, grade_id: str, token: str) -> str:
    """The released check cell, with its check's result kept and judged by code appended to the cell."""
    tree = ast.parse(source)
    calls = [s for s in tree.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
             and isinstance(s.value.func, ast.Attribute) and s.value.func.attr == grade_id
             and isinstance(s.value.func.value, ast.Name)]
    if len(calls) != 1:
        raise ValueError(f"the check cell {grade_id} does not call it once at its top level:\n{source}")
    call = calls[0]
    lines = source.splitlines()
    result, fn = f"_fftd_result_{token}", f"_fftd_verdict_{token}"
    lines[call.lineno - 1] = f"{result} = " + lines[call.lineno - 1]
    digest = inspect.getsource(_code_digest).replace("\n", "\n    ")
    expected = _expected_digests(grade_id)
    judge = _VERDICT.format(fn=fn, digest=digest)
    return ("\n".join(lines) + "\n" + judge + f"{fn}({result}, {call.value.func.value.id}, {expected!r}, {token!r})\n"
            f"del {fn}, {result}\n")


# ---- running and scoring ---------------------------------------------------------------------------------------

def _text(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def _error(outputs: list) -> tuple[str, str] | None:
    for o in outputs:
        if o.get("output_type") == "error":
            return o.get("ename", "Error"), str(o.get("evalue", "")).splitlines()[0] if o.get("evalue") else ""
    return None


class _Watchdog:
    """Kills the kernel if a cell outlives its interrupt (a loop that catches KeyboardInterrupt, a hung C call)."""

    def __init__(self, client, seconds: float):
        self.client, self.seconds, self.fired, self.timer = client, seconds, False, None

    def _kill(self) -> None:
        self.fired = True
        process = getattr(getattr(self.client.km, "provisioner", None), "process", None)
        if process is not None:
            process.kill()

    def __enter__(self):
        self.timer = threading.Timer(self.seconds, self._kill)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


def _kernel_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV_DROP}
    env.update(KERNEL_ENV)
    return env


def _prepare(cells: list, refs: list[tuple[str, str, float]], token: str):
    """The notebook to run: every code cell as submitted, each released check cell found in it instrumented.

    Returns ``(run_cells, where, pending)``: ``where`` maps a cell index to its ``(grade_id, points)``,
    ``pending`` lists the checks scored before running, ``(grade_id, points, why)`` (edited or deleted).
    """
    where: dict[int, tuple[str, float]] = {}  # submission cell index -> (grade_id, points)
    pending: list[tuple[str, float, str]] = []  # scored before running (tampered)
    for grade_id, source, points in refs:
        i, why = _locate(cells, grade_id, source)
        if i is None or i in where:
            pending.append((grade_id, points, why or "check cell deleted"))
        else:
            where[i] = (grade_id, points)
    run_cells = []
    for i, c in enumerate(cells):
        if c.cell_type != "code":
            run_cells.append(nbformat.v4.new_markdown_cell(""))
            continue
        source = _instrument(c.source, where[i][0], token) if i in where else c.source
        run_cells.append(nbformat.v4.new_code_cell(source))
    return run_cells, where, pending


def _run_cells(client, run_cells: list, where: dict, report: SubmissionReport, cell_timeout: float,
               total_timeout: float, started: float) -> dict[int, str]:
    """Execute the code cells in turn in ``client``'s kernel; returns ``{cell index: status}`` of cells that
    stopped ("timed out", or why they did not run). Errors outside check cells go to ``report.notes``."""
    from nbclient.exceptions import DeadKernelError  # noqa: PLC0415

    verdicts: dict[int, str] = {}
    stopped: str | None = None
    try:
        with client.setup_kernel(env=_kernel_env()):
            for i, cell in enumerate(run_cells):
                if cell.cell_type != "code":
                    continue
                if stopped:
                    verdicts[i] = stopped
                    continue
                if time.monotonic() - started > total_timeout:
                    stopped = f"the whole notebook ran past {total_timeout:g} s"
                    verdicts[i] = stopped
                    continue
                began = time.monotonic()
                # nbclient interrupts a cell at cell_timeout (and again every cell_timeout); past the
                # watchdog's time the kernel is killed.
                with _Watchdog(client, min(2 * cell_timeout + 30, max(1.0, total_timeout - (began - started)))) as dog:
                    try:
                        client.execute_cell(cell, i)
                    except DeadKernelError:
                        stopped = (f"cell {i + 1} did not stop when interrupted; the kernel was stopped" if dog.fired
                                   else f"the kernel died in cell {i + 1}")
                        verdicts[i] = "timed out" if dog.fired else stopped
                        continue
                err = _error(cell.outputs)
                if time.monotonic() - began >= cell_timeout:
                    verdicts[i] = "timed out"
                    report.notes.append(f"cell {i + 1} ran past {cell_timeout:g} s and was interrupted")
                elif err and i not in where:
                    report.notes.append(f"cell {i + 1} raised {err[0]}: {err[1]}")
    except Exception as e:  # the kernel would not start, or the client failed: report, do not crash
        report.notes.append(f"the notebook could not be run: {type(e).__name__}: {e}")
    return verdicts


def _score_cell(report: SubmissionReport, cell, i: int, grade_id: str, points: float, verdict: str | None,
                token: str, cell_timeout: float) -> None:
    """Score one executed check cell from what it printed (its tagged verdict) or why it did not finish."""
    tagged = [line[len(token):] for line in _text(cell.outputs).splitlines() if line.startswith(token)]
    err = _error(cell.outputs)
    if verdict is not None and verdict != "timed out":
        report.add_score(grade_id, points, "not run", verdict)
    elif verdict is not None:
        report.add_score(grade_id, points, "timed out", f"cell {i + 1} ran past {cell_timeout:g} s (an endless "
                                                        "loop?) and was interrupted")
    elif tagged:
        found = json.loads(tagged[-1])
        if not found["genuine"]:
            report.add_score(grade_id, points, "check function replaced",
                             f"{found['why']} is not the course's own code (redefined in the notebook?)")
        elif found["status"] in ("pass", "fail", "not attempted"):
            report.add_score(grade_id, points, found["status"], found["message"])
        else:
            report.add_score(grade_id, points, "check function replaced",
                             "the check did not return the course's CheckResult")
    elif err:
        report.add_score(grade_id, points, "raised", f"cell {i + 1} raised {err[0]}: {err[1]}")
    else:
        report.add_score(grade_id, points, "not run", "no verdict was printed")


def grade_submission(path: str | Path, root: Path, cell_timeout: float = 600, total_timeout: float = 3600,
                     learner: str | None = None) -> SubmissionReport:
    """Run one submission in a fresh kernel and score it; never raises for anything the notebook does."""
    from nbclient import NotebookClient  # noqa: PLC0415

    path = Path(path)
    learner = learner or path.resolve().parent.name
    solution = _chapter_of(path, root)
    refs = reference_checks(solution, root)
    report = SubmissionReport(learner, str(path), solution.stem)
    started = time.monotonic()
    try:
        nb = _read_submission(path)
    except Exception as e:  # a damaged file is a result, not a crash
        for grade_id, _, points in refs:
            report.add_score(grade_id, points, "not run", f"the file could not be read: {type(e).__name__}: {e}")
        return report
    token = secrets.token_hex(8)
    run_cells, where, pending = _prepare(list(nb.cells), refs, token)
    run_nb = nbformat.v4.new_notebook(cells=run_cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                               "language": "python"}})
    with tempfile.TemporaryDirectory(prefix="fftd-grade-") as workdir:
        client = NotebookClient(run_nb, timeout=int(cell_timeout), kernel_name="python3", allow_errors=True,
                                interrupt_on_timeout=True, record_timing=False, shutdown_kernel="immediate",
                                extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not its TCP notice per notebook
                                resources={"metadata": {"path": workdir}})
        verdicts = _run_cells(client, run_cells, where, report, cell_timeout, total_timeout, started)
    for i, (grade_id, points) in sorted(where.items()):
        _score_cell(report, run_cells[i], i, grade_id, points, verdicts.get(i), token, cell_timeout)
    for grade_id, points, why in pending:
        report.add_score(grade_id, points, why, "its code differs from the released check cell"
                         if why == "check cell edited" else "no cell of the notebook holds the released check")
    order = [g for g, _, _ in refs]
    report.scores.sort(key=lambda s: order.index(s.exercise))
    report.seconds = time.monotonic() - started
    return report


def grade(paths: list[str | Path], root: Path, cell_timeout: float = 600, total_timeout: float = 3600,
          progress: bool = True) -> list[SubmissionReport]:
    """Grade every submission in turn (each in its own fresh kernel)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    return [grade_submission(p, root, cell_timeout, total_timeout)
            for p in tqdm([Path(p) for p in paths], desc="grading", unit="notebook", disable=not progress)]


def format_report(reports: list[SubmissionReport]) -> str:
    """The per-exercise table of each learner, then one line per submission."""
    lines = []
    for r in reports:
        lines.append(f"{r.learner}: {r.submission} ({r.chapter}), {r.points:g}/{r.max_points:g} in {r.seconds:.0f} s")
        width = max((len(s.exercise) for s in r.scores), default=8)
        for s in r.scores:
            reason = f": {s.reason.splitlines()[0]}" if s.reason and s.status != "pass" else ""
            lines.append(f"  {s.exercise:<{width}}  {s.points:g}/{s.max_points:g}  {s.status}{reason}")
        lines += [f"  note: {n}" for n in r.notes]
    if len(reports) > 1:
        lines.append("")
        width = max(len(r.learner) for r in reports)
        lines += [f"{r.learner:<{width}}  {r.chapter}  {r.points:g}/{r.max_points:g}" for r in reports]
    return "\n".join(lines)


def write_csv(reports: list[SubmissionReport], path: str | Path) -> None:
    """One row per learner, submission and exercise (the columns of :class:`ExerciseScore`)."""
    fields = list(ExerciseScore.__dataclass_fields__)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in reports:
            writer.writerows(asdict(s) for s in r.scores)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="student notebooks (NN_name.ipynb or .py), each in a folder named after its learner")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per learner and exercise here")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one cell may run (default 600)")
    parser.add_argument("--total-timeout", type=float, default=3600, help="seconds one notebook may run (default 3600)")
    parser.add_argument("--root", type=Path, default=None, help="course repository whose solutions/ define the checks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    root = course_root(args.root)
    missing = [p for p in args.submissions if not Path(p).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        for p in args.submissions:
            _chapter_of(Path(p), root)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = grade(args.submissions, root, args.timeout, args.total_timeout, progress=not args.no_progress)
    print(format_report(reports))
    if args.csv:
        write_csv(reports, args.csv)
        print(f"wrote {args.csv}")
    return 0
