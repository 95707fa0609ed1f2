"""The chapters' prose stays readable: no markdown cell over 200 words, and chapters 06-10 keep the cuts of issue 18.

Words are whitespace-separated tokens of a markdown cell's source, read with ``jupytext.read`` from
``solutions/NN_name.py`` (the student notebooks are generated from these). Run with ``-s`` to see each chapter's
count: the per-chapter test prints it.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py"))
MAX_CELL_WORDS = 200

# Markdown words per chapter measured at commit 90c244f (issue 18, "walls of prose"); chapters 06-10 must keep at
# most two thirds of these.
BASELINE_WORDS = {"06": 3205, "07": 3065, "08": 3019, "09": 2616, "10": 3187}
TARGET_WORDS = {number: words * 2 // 3 for number, words in BASELINE_WORDS.items()}


def markdown_cells(path: Path) -> list[tuple[int, int, str]]:
    """(cell index, words, first line) of each markdown cell of a chapter."""
    cells = []
    for index, cell in enumerate(jupytext.read(path).cells):
        if cell.cell_type == "markdown":
            source = cell.source.strip()
            cells.append((index, len(source.split()), source.splitlines()[0][:60] if source else ""))
    return cells


def test_the_chapters_are_found():
    assert len(CHAPTERS) >= 12, [p.name for p in CHAPTERS]
    assert {p.name[:2] for p in CHAPTERS} >= set(BASELINE_WORDS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name[:2])
def test_no_markdown_cell_over_200_words(path):
    cells = markdown_cells(path)
    print(f"{path.name}: {sum(words for _, words, _ in cells)} markdown words in {len(cells)} cells")
    too_long = [f"cell {index} ({words} words): {first!r}" for index, words, first in cells if words > MAX_CELL_WORDS]
    assert not too_long, f"{path.name} has markdown cells over {MAX_CELL_WORDS} words:\n" + "\n".join(too_long)


@pytest.mark.parametrize("number", sorted(TARGET_WORDS))
def test_chapters_06_to_10_stay_a_third_shorter(number):
    (path,) = [p for p in CHAPTERS if p.name.startswith(number + "_")]
    words = sum(words for _, words, _ in markdown_cells(path))
    print(f"{path.name}: {words} markdown words (was {BASELINE_WORDS[number]}, target <= {TARGET_WORDS[number]})")
    assert words <= TARGET_WORDS[number], (
        f"{path.name} has {words} markdown words; at most {TARGET_WORDS[number]} (two thirds of "
        f"{BASELINE_WORDS[number]}, measured at commit 90c244f)"
    )
