"""Chapter numbers and errata assignments that a learner reads are true.

(a) Every "chapter NN" / "chapters NN-MM" / "chapters NN, MM and KK" in a chapter (``solutions/*.py``), the
    README, SYLLABUS.md, ``docs/*.md`` and ``data_scripts/README.md`` names a chapter that has a file
    ``solutions/NN_*.py``. Only numbers that follow the word "chapter(s)" count, so "eq. 12", "Table 12",
    "12 chapters" or a parenthesised "(09)" are not chapter references.
(b) Every chapter that is said to teach an erratum mentions it (``E<n>`` in its ``solutions/NN_*.py``):
    the chapters of an entry's "**Taught in**" line in ``docs/ERRATA.md``, the "chapter" column of the
    summary tables in ``docs/ERRATA.md`` and README.md, and the errata a SYLLABUS.md chapter section cites.

A unit test of each scanner plants mistakes (and look-alikes that are not mistakes) in a small repository.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# "chapter 05", "Chapters 01-04", "chapters 06 (guidance), 08 and 09", "chapters 03-06, 08 and 09"
_ONE = r"\d{1,2}(?:\s*[-–]\s*\d{1,2})?(?:\s*\([^()]*\))?"
CHAPTER_REF = re.compile(rf"\b[Cc]hapters?\s+({_ONE}(?:\s*(?:,\s*and|,|and|&)\s+{_ONE})*)")
NUMBER_OR_RANGE = re.compile(r"(\d{1,2})(?:\s*[-–]\s*(\d{1,2}))?")
E_NUMBER = re.compile(r"\bE(\d{1,2})\b")


def prose(path: Path, text: str) -> str:
    """``text`` with the ``# `` of a chapter's comment lines dropped, so a list that wraps a line still reads as one."""
    if path.suffix != ".py":
        return text
    return "\n".join(re.sub(r"^\s*#\s?", "", line) for line in text.splitlines())


def chapter_refs(text: str) -> list[tuple[int, str]]:
    """``(chapter number, the words that name it)`` for every chapter reference in ``text``."""
    found = []
    for m in CHAPTER_REF.finditer(text):
        numbers = re.sub(r"\([^()]*\)", "", m.group(1))  # "06 (guidance), 08" -> "06 , 08"
        for n in NUMBER_OR_RANGE.finditer(numbers):
            first, last = int(n.group(1)), int(n.group(2) or n.group(1))
            found.extend((k, " ".join(m.group(0).split())) for k in range(first, last + 1))
    return found


def chapters(root: Path) -> dict[int, Path]:
    """Chapter number -> ``solutions/NN_name.py``."""
    return {int(p.name[:2]): p for p in sorted((root / "solutions").glob("[0-9][0-9]_*.py"))}


def read_files(root: Path) -> list[Path]:
    files = [*root.glob("solutions/[0-9][0-9]_*.py"), *root.glob("docs/*.md"), root / "README.md",
             root / "SYLLABUS.md", root / "data_scripts" / "README.md"]
    return sorted(p for p in files if p.is_file())


def missing_chapters(root: Path) -> list[str]:
    """Rule (a): references to a chapter number that has no ``solutions/NN_*.py``."""
    have = chapters(root)
    problems = []
    for path in read_files(root):
        text = prose(path, path.read_text(encoding="utf-8"))
        missing: dict[str, list[int]] = {}  # per reference, in the order they stand
        for number, words in chapter_refs(text):
            if number not in have:
                missing.setdefault(words, []).append(number)
        for words, numbers in missing.items():
            problems.append(f"{path.relative_to(root)}: {words!r} names chapter(s) {', '.join(f'{n:02d}' for n in numbers)}"
                            f", which have no file (chapters: {min(have):02d}-{max(have):02d})")
    return problems


def errata_assignments(root: Path) -> list[tuple[int, int, str]]:
    """``(erratum, chapter, where it is said)`` for every place that says a chapter teaches an erratum."""
    out = []
    errata = root / "docs" / "ERRATA.md"
    if errata.exists():
        text = errata.read_text(encoding="utf-8")
        sections = re.split(r'^<a id="e(\d+)"></a>\s*$', text, flags=re.M)
        for number, body in zip(sections[1::2], sections[2::2]):
            m = re.search(r"^- \*\*Taught in\*\*(.*?)(?=^- \*\*|^\s*$|\Z)", body, re.M | re.S)
            if m:
                out += [(int(number), ch, f"docs/ERRATA.md, E{number}'s 'Taught in'") for ch, _ in chapter_refs(m.group(1))]
        out += _table_rows(text, "docs/ERRATA.md's summary table")
    readme = root / "README.md"
    if readme.exists():
        out += _table_rows(readme.read_text(encoding="utf-8"), "README.md's errata table")
    syllabus = root / "SYLLABUS.md"
    if syllabus.exists():
        # a chapter's section opens with its bold link to the notebook: ** [05 IVQ-VAE] (notebooks/...) ** unspaced
        parts = re.split(r"^\*\*\[(\d\d) [^\]]*\]\([^)]*\)\*\*", syllabus.read_text(encoding="utf-8"), flags=re.M)
        for chapter, body in zip(parts[1::2], parts[2::2]):
            body = re.split(r"^#", body, maxsplit=1, flags=re.M)[0]  # up to the next heading
            out += [(int(e), int(chapter), "SYLLABUS.md") for e in E_NUMBER.findall(body)]
    return out


def _table_rows(text: str, where: str) -> list[tuple[int, int, str]]:
    """Rows ``| [E7](...) | ... | 05 |`` or ``... | 03, 05 |``: the erratum and the chapters of the last column."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\|\s*\[E(\d+)\]\([^)]*\)\s*\|.*\|\s*([\d,\s]+)\s*\|\s*$", line)
        if m:
            out += [(int(m.group(1)), int(ch), where) for ch in re.findall(r"\d{1,2}", m.group(2))]
    return out


def untaught_errata(root: Path) -> list[str]:
    """Rule (b): a chapter said to teach E<n> whose source never mentions E<n>."""
    have = chapters(root)
    problems = []
    for erratum, chapter, where in errata_assignments(root):
        path = have.get(chapter)
        if path is None:
            problems.append(f"{where}: E{erratum} is assigned to chapter {chapter:02d}, which has no file")
        elif not re.search(rf"\bE{erratum}\b", path.read_text(encoding="utf-8")):
            problems.append(f"{where}: E{erratum} is assigned to chapter {chapter:02d}, but "
                            f"{path.relative_to(root)} never mentions E{erratum}")
    return sorted(set(problems))


# ---- the repository ---------------------------------------------------------------------------------------

def test_every_chapter_reference_names_a_chapter_that_exists():
    assert len(chapters(ROOT)) >= 12
    problems = missing_chapters(ROOT)
    assert not problems, "chapter references without a chapter:\n  " + "\n  ".join(problems)


def test_every_chapter_said_to_teach_an_erratum_mentions_it():
    said = errata_assignments(ROOT)
    assert len({e for e, _, w in said if "Taught in" in w}) >= 25, "the scanner no longer reads ERRATA's 'Taught in'"
    assert any("README" in w for _, _, w in said) and any("SYLLABUS" in w for _, _, w in said)
    problems = untaught_errata(ROOT)
    assert not problems, "errata assigned to a chapter that does not teach them:\n  " + "\n  ".join(problems)


# ---- the scanners catch planted mistakes ------------------------------------------------------------------

def test_chapter_refs_read_lists_ranges_and_asides():
    assert [n for n, _ in chapter_refs("see chapter 05 and Chapters 01-03")] == [5, 1, 2, 3]
    assert [n for n, _ in chapter_refs("chapters 06 (guidance), 08 and 09")] == [6, 8, 9]
    assert [n for n, _ in chapter_refs("with a GPU, chapters 03-06, 08 and 09 use more data")] == [3, 4, 5, 6, 8, 9]
    assert [n for n, _ in chapter_refs("chapter 01 (GroupNorm), chapter 05 (the toy's batch) and\nchapter 10")] == [1, 5, 10]
    not_refs = ("eq. 12 and Table 13", "12 chapters", "the paper's section 3.2", "E12", "both together (09)",
                "chapter_seconds(14)", "this chapter's 25 lines", "chapters' .py files", "a chapter, 20 lines")
    for text in not_refs:
        assert chapter_refs(text) == [], text


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Chapters 00-02; chapter 01 teaches E1, chapter 02 mentions no erratum."""
    (tmp_path / "solutions").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "solutions" / "00_setup.py").write_text("# %% [markdown]\n# Next: chapter 01.\n")
    (tmp_path / "solutions" / "01_blocks.py").write_text("# %% [markdown]\n# > **What we chose** (E1).\n")
    (tmp_path / "solutions" / "02_attention.py").write_text("# %% [markdown]\n# Chapters 00-01 built blocks.\n")
    (tmp_path / "docs" / "ERRATA.md").write_text(
        '| # | in short | chapter |\n|---|---|---|\n| [E1](#e1) | a | 01 |\n\n'
        '<a id="e1"></a>\n## E1 · one\n\n- **The code** x.\n- **Taught in** chapter 01 (blocks).\n\n')
    (tmp_path / "README.md").write_text("Eq. 12 and Table 13; chapters 00-02.\n\n| [E1](docs/ERRATA.md#e1) | a | 01 |\n")
    (tmp_path / "SYLLABUS.md").write_text("## Chapters\n\n**[01 blocks](notebooks/01_blocks.ipynb)** (eq. 1)\n"
                                          "- build the blocks (E1).\n\n**[02 attention](notebooks/02_attention.ipynb)**\n"
                                          "- attention.\n\n## Time\n\nE1 appears here, outside any chapter.\n")
    return tmp_path


def test_planted_repository_is_clean(repo):
    assert missing_chapters(repo) == []
    assert untaught_errata(repo) == []
    assert {(e, ch) for e, ch, _ in errata_assignments(repo)} == {(1, 1)}


@pytest.mark.parametrize("file, text", [
    ("README.md", "Next: chapter 12 trains on GPUs.\n"),
    ("SYLLABUS.md", "Chapters 01-03 build stage 1.\n"),
    ("solutions/02_attention.py", "# %% [markdown]\n# as chapters 01 and\n# 05 show\n"),
    ("docs/ERRATA.md", "- **Taught in** chapter 7.\n"),
    ("data_scripts/README.md", "The full-scale path (chapters 01-05) trains on AFHQ.\n"),
])
def test_planted_missing_chapter_is_caught(repo, file, text):
    path = repo / file
    path.parent.mkdir(exist_ok=True)
    path.write_text((path.read_text() if path.exists() else "") + text)
    problems = missing_chapters(repo)
    assert len(problems) == 1 and problems[0].startswith(file) and "have no file" in problems[0], problems


@pytest.mark.parametrize("file, old, new, where", [
    ("docs/ERRATA.md", "chapter 01 (blocks)", "chapters 01 and 02", "'Taught in'"),
    ("docs/ERRATA.md", "| a | 01 |", "| a | 01, 02 |", "summary table"),
    ("README.md", "| a | 01 |", "| a | 02 |", "README.md's errata table"),
    ("SYLLABUS.md", "- attention.", "- attention (E1).", "SYLLABUS.md"),
])
def test_planted_erratum_the_chapter_never_mentions_is_caught(repo, file, old, new, where):
    path = repo / file
    path.write_text(path.read_text().replace(old, new))
    problems = untaught_errata(repo)
    assert len(problems) == 1 and where in problems[0], problems
    assert "E1 is assigned to chapter 02" in problems[0] and "never mentions E1" in problems[0]
