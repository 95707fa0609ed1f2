"""Every chapter's exercises make the learner think: the rules of COURSE.md's "What makes a good exercise".

The scanner reads each ``solutions/NN_name.py`` (jupytext percent format; the student notebooks are generated
from it) and reports

(a) an answer that stands elsewhere: a non-trivial line of a ``### BEGIN SOLUTION`` block that appears in
    what the learner sees of the chapter (the chapter with every solution block removed) or in a hint of the
    chapter's checks (``fftd_course/checks/chNN.py``). A line is non-trivial unless it is blank, a comment,
    a ``def``/``class`` line or a decorator, or shorter than :data:`MIN_CHARS` characters once comments and
    spaces are dropped (``return x``-style trivia). For ``return EXPR`` and ``NAME = EXPR`` lines the
    expression alone is looked for too, so that ``means = images.mean(dim=(0, 2, 3))`` in a later cell
    gives away ``return images.mean(dim=(0, 2, 3))``. Given broken code of a find-the-bug exercise (a
    function or class whose name starts with ``buggy_`` or ``Buggy``) is not "elsewhere": the fix shares its
    correct lines by design, and the lines that differ are the answer;
(b) fewer than three solution blocks (two in chapter 00), or no "Going further" section (a markdown cell
    that says "Going further", before the summary);
(c) a code cell longer than :data:`MAX_CELL_LINES` lines (blank lines at its ends not counted);
(d) test machinery in a chapter's code cells: ``set_num_threads`` or ``perf_counter`` (threads and the
    chapter clock belong to ``fftd_course.setup_chapter``, measurements to ``fftd_course.timing``);
(e) a chapter whose first code cell does not call ``fftd_course.setup_chapter(...)`` or whose last code cell
    does not print ``fftd_course.chapter_seconds()``.

Each rule is also shown to fail on a small planted violation.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py"))

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
MIN_CHARS = 25
MAX_CELL_LINES = 25
MACHINERY = ("set_num_threads", "perf_counter")
BUGGY = re.compile(r"^(\s*)(?:def|class)\s+(buggy_\w*|Buggy\w*)")


@dataclass
class Cell:
    kind: str  # "code" or "markdown"
    first_line: int  # 1-based line number of the cell's "# %%" marker
    lines: list[str]


def cells(text: str) -> list[Cell]:
    """The cells of a percent-format chapter (the header before the first ``# %%`` is not a cell)."""
    out: list[Cell] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("# %%"):
            out.append(Cell("markdown" if "[markdown]" in line else "code", number, []))
        elif out:
            out[-1].lines.append(line)
    return out


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def _drop_comment(line: str) -> str:
    # Inline comments follow two spaces (PEP 8); a '#' inside a string is left alone that way.
    stripped = line.strip()
    if stripped.startswith("#"):
        return ""
    return re.split(r"\s{2,}#", stripped, maxsplit=1)[0].strip()


def solution_blocks(text: str) -> list[tuple[int, list[str]]]:
    """``(line number of BEGIN, lines inside)`` for every solution block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == BEGIN:
            current, start = [], number
        elif line.strip() == END and current is not None:
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def learner_view(text: str) -> str:
    """The chapter as the student notebook shows it, minus the given broken code of find-the-bug exercises."""
    out, inside, buggy_indent = [], False, None
    for line in text.splitlines():
        if line.strip() == BEGIN:
            inside = True
            continue
        if line.strip() == END:
            inside = False
            continue
        if inside:
            continue
        if buggy_indent is not None:
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= buggy_indent and not line.lstrip().startswith((")", "]")):
                buggy_indent = None
            else:
                continue
        m = BUGGY.match(line)
        if m:
            buggy_indent = len(m.group(1))
            continue
        out.append(line)
    return "\n".join(out)


def answer_fragments(line: str) -> list[str]:
    """What of one solution line must not appear elsewhere: the line, and its expression if it returns or assigns one."""
    code = _drop_comment(line)
    if not code or code.startswith(("def ", "class ", "@", "async def ")):
        return []
    fragments = [code]
    try:
        node = ast.parse(code).body[0]
    except (SyntaxError, IndexError):  # part of a statement that spans lines
        node = None
    value = None
    if isinstance(node, ast.Return) and node.value is not None:
        value = node.value
    elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
        value = node.value
    if value is not None:
        fragments.append(ast.get_source_segment(code, value) or "")
    return [_norm(f) for f in fragments if len(_norm(f)) >= MIN_CHARS]


def hints(checks_source: str) -> list[str]:
    """The ``hint=...`` strings of a checks module (string literals, implicit concatenations, f-strings), and each
    nudge of a find-the-bug check's ``nudges=(...)``."""
    found = []
    for node in ast.walk(ast.parse(checks_source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("hint", "nudges"):
                    try:
                        value = ast.literal_eval(kw.value)
                    except ValueError:
                        value = ast.get_source_segment(checks_source, kw.value) or ""
                    found.extend(value if isinstance(value, (tuple, list)) else [value])
    return found


def visible_answers(text: str, hint_texts: list[str]) -> list[str]:
    """Rule (a): solution lines that stand in the learner's view of the chapter or in a check's hint."""
    view = _norm(learner_view(text))
    hint_text = [_norm(h) for h in hint_texts]
    problems = []
    for start, lines in solution_blocks(text):
        for offset, line in enumerate(lines, start=1):
            for fragment in answer_fragments(line):
                where = "the chapter" if fragment in view else next(("a check's hint" for h in hint_text if fragment in h), None)
                if where:
                    problems.append(f"line {start + offset}: `{fragment}` also stands in {where}")
                    break
    return problems


def structure_problems(text: str, min_blocks: int = 3) -> list[str]:
    """Rule (b): enough solution blocks and a "Going further" section before the summary."""
    problems = []
    n = len(solution_blocks(text))
    if n < min_blocks:
        problems.append(f"{n} solution block(s), at least {min_blocks} wanted")
    markdown = [(c.first_line, "\n".join(c.lines)) for c in cells(text) if c.kind == "markdown"]
    further = [line for line, body in markdown if "Going further" in body]
    summary = [line for line, body in markdown if re.search(r"^#\s*##+\s*Summary", body, re.M)]
    if not further:
        problems.append('no "Going further" section')
    elif summary and min(further) > max(summary):
        problems.append('"Going further" comes after the summary')
    return problems


def long_cells(text: str, limit: int = MAX_CELL_LINES) -> list[str]:
    """Rule (c): code cells over ``limit`` lines."""
    problems = []
    for c in cells(text):
        if c.kind != "code":
            continue
        body = "\n".join(c.lines).strip("\n").splitlines()
        if len(body) > limit:
            problems.append(f"the code cell at line {c.first_line} has {len(body)} lines (at most {limit})")
    return problems


def machinery(text: str) -> list[str]:
    """Rule (d): thread settings and timers in code cells."""
    problems = []
    for c in cells(text):
        if c.kind != "code":
            continue
        for i, line in enumerate(c.lines, start=c.first_line + 1):
            for word in MACHINERY:
                if word in _drop_comment(line):
                    problems.append(f"line {i}: `{word}` belongs to fftd_course.setup_chapter / the package, not a chapter cell")
    return problems


def setup_problems(text: str) -> list[str]:
    """Rule (e): the one setup call opens the chapter and its clock closes it."""
    code = [c for c in cells(text) if c.kind == "code"]
    problems = []
    if not code or "fftd_course.setup_chapter(" not in "\n".join(code[0].lines):
        problems.append("the first code cell does not call fftd_course.setup_chapter(...)")
    if not code or "chapter_seconds()" not in "\n".join(code[-1].lines):
        problems.append("the last code cell does not print fftd_course.chapter_seconds()")
    return problems


def _checks_source(chapter: Path) -> str:
    module = ROOT / "fftd_course" / "checks" / f"ch{chapter.name[:2]}.py"
    return module.read_text(encoding="utf-8") if module.exists() else ""


ids = [p.stem for p in CHAPTERS]


def test_chapters_found():
    assert CHAPTERS, "no solutions/NN_name.py found"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=ids)
def test_answers_do_not_stand_elsewhere(chapter):
    problems = visible_answers(chapter.read_text(encoding="utf-8"), hints(_checks_source(chapter)))
    assert not problems, f"{chapter.name}: the answer can be copied instead of thought out:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=ids)
def test_exercise_count_and_going_further(chapter):
    problems = structure_problems(chapter.read_text(encoding="utf-8"), 2 if chapter.name.startswith("00_") else 3)
    assert not problems, f"{chapter.name}: " + "; ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=ids)
def test_code_cells_are_short(chapter):
    problems = long_cells(chapter.read_text(encoding="utf-8"))
    assert not problems, f"{chapter.name}: split these cells where a result is worth looking at:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=ids)
def test_no_thread_or_timer_code_in_chapters(chapter):
    problems = machinery(chapter.read_text(encoding="utf-8"))
    assert not problems, f"{chapter.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=ids)
def test_setup_call_first_and_clock_last(chapter):
    problems = setup_problems(chapter.read_text(encoding="utf-8"))
    assert not problems, f"{chapter.name}: " + "; ".join(problems)


# ---- each rule fails on a planted violation --------------------------------------------------------------

PLANTED = '''# %% [markdown]
# # A chapter

# %%
means = images.mean(dim=(0, 2, 3))
start = time.perf_counter()


# %%
def channel_mean(images):
    ### BEGIN SOLUTION
    return images.mean(dim=(0, 2, 3))
    ### END SOLUTION


# %%
def buggy_scale(x):
    y = torch.cat([x, x], dim=1) * 0.5
    return y - 1.0


def scale(x):
    ### BEGIN SOLUTION
    y = torch.cat([x, x], dim=1) * 0.5
    return y + 1.0
    ### END SOLUTION


# %%
def chapter_only_once(x):
    ### BEGIN SOLUTION
    return torch.linalg.vector_norm(x, dim=-1)
    ### END SOLUTION

# %% [markdown]
# ## Summary
'''


def test_planted_answer_in_the_chapter_is_found():
    problems = visible_answers(PLANTED, [])
    assert len(problems) == 1 and "images.mean(dim=(0, 2, 3))" in problems[0]


def test_planted_answer_in_a_hint_is_found():
    source = 'run_check("x", trial, hint="use torch.linalg.vector_norm(x, dim=-1)")\n'
    assert hints(source) == ["use torch.linalg.vector_norm(x, dim=-1)"]
    problems = visible_answers(PLANTED, hints(source))
    assert any("vector_norm" in p and "hint" in p for p in problems)


def test_given_broken_code_is_not_elsewhere_but_the_fix_would_be():
    # The correct line shared with buggy_scale is allowed; the same line anywhere else is not.
    assert not any("torch.cat" in p for p in visible_answers(PLANTED, []))
    leaked = PLANTED + "\n# %%\ny = torch.cat([x, x], dim=1) * 0.5\n"
    assert any("torch.cat" in p for p in visible_answers(leaked, []))


def test_trivial_lines_are_not_answers():
    assert answer_fragments("    return x + 1  # shift") == []
    assert answer_fragments("    def forward(self, x: torch.Tensor) -> torch.Tensor:") == []
    assert answer_fragments("    # a comment that is long enough to count as a line") == []
    assert answer_fragments("    h = self.conv1(blocks.swish(self.norm1(x)))") == [
        "h = self.conv1(blocks.swish(self.norm1(x)))", "self.conv1(blocks.swish(self.norm1(x)))"]


def test_planted_structure_problems_are_found():
    assert structure_problems(PLANTED) == ['no "Going further" section']
    assert structure_problems(PLANTED, min_blocks=4)[0] == "3 solution block(s), at least 4 wanted"
    late = PLANTED + "\n# %% [markdown]\n# **Going further.** An open question.\n"
    assert '"Going further" comes after the summary' in structure_problems(late)
    early = PLANTED.replace("# ## Summary", "# ## Going further\n#\n# Questions.\n\n# %% [markdown]\n# ## Summary")
    assert structure_problems(early) == []


def test_planted_long_cell_is_found():
    text = "# %%\n" + "x = 1\n" * (MAX_CELL_LINES + 1) + "\n\n# %%\n" + "y = 2\n" * MAX_CELL_LINES + "\n\n"
    problems = long_cells(text)
    assert len(problems) == 1 and f"{MAX_CELL_LINES + 1} lines" in problems[0]


def test_planted_machinery_is_found():
    problems = machinery(PLANTED + "\n# %%\ntorch.set_num_threads(1)  # quiet\n\n# %% [markdown]\n# perf_counter in prose is fine\n")
    assert len(problems) == 2
    assert "perf_counter" in problems[0] and "set_num_threads" in problems[1]


def test_planted_missing_setup_and_clock_are_found():
    assert setup_problems(PLANTED) == ["the first code cell does not call fftd_course.setup_chapter(...)",
                                       "the last code cell does not print fftd_course.chapter_seconds()"]
    good = ("# %%\ndevice = fftd_course.setup_chapter(seed=0)\n\n" + PLANTED
            + '\n# %%\nprint(f"chapter ran in {fftd_course.chapter_seconds():.1f} s")\n')
    assert setup_problems(good) == []
