"""Everything a learner reads resolves inside the repository (or to a public URL).

The scanner reads the chapters (``solutions/*.py``, ``notebooks/*.py``; the ``.ipynb`` files are generated
from them and checked for sync elsewhere), the package, the tests, ``docs/``, ``data_scripts/``, the README,
the Makefile and the project files, and reports

(a) a reference to something a learner does not have: a path outside the repository (``../shared``,
    ``shared/...``), the authors' private notes (``DIGEST``, ``REFERENCES.md``), or the project's issue
    tracker wording ("this issue", "deliverable 3");
(b) an erratum cited as "errata 10" instead of "E10", or an ``E<n>`` that ``docs/ERRATA.md`` does not
    define (``<a id="e<n>"></a>`` before a heading ``## E<n> · ...``);
(c) a relative Markdown link whose file does not exist, or whose ``#anchor`` the target does not define.

Allow-list, kept tiny: this file (it has to spell the patterns out) and lint codes after ``noqa:``
(``E402`` is flake8's, not an erratum).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ERRATA = ROOT / "docs" / "ERRATA.md"

OUTSIDE = [
    (re.compile(r"\.\./shared|(?<![\w./-])shared/"), "a path outside the repository"),
    (re.compile(r"\bDIGEST\b"), "the authors' private paper notes: cite docs/PAPER.md or docs/ERRATA.md"),
    (re.compile(r"\bREFERENCES(\.md)?\b"), "the authors' private notes: cite a public URL"),
    (re.compile(r"\bthis issue\b", re.I), "the project's issue tracker: say what is meant in plain words"),
    (re.compile(r"\bdeliverable \d", re.I), "the project's issue tracker: say what is meant in plain words"),
]
ERRATA_WORDS = re.compile(r"\berrat(?:a|um)\s+(?:section\s+)?(\d+)", re.I)
E_REF = re.compile(r"\bE(\d+)\b")
NOQA = re.compile(r"noqa:[\sA-Z0-9,]*")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ANCHOR_ID = re.compile(r"<a\s+id=\"([^\"]+)\"")


def scanned_files(root: Path = ROOT) -> list[Path]:
    """Every file a learner reads, except this one."""
    files = [*root.glob("solutions/*.py"), *root.glob("notebooks/*.py"), *root.glob("fftd_course/**/*.py"),
             *root.glob("tests/**/*.py"), *root.glob("docs/*.md"), *root.glob("docs/*.py"), *root.glob("*.py"),
             *root.glob("data_scripts/*"), root / "README.md", root / "SYLLABUS.md", root / "Makefile", root / "pyproject.toml",
             root / "environment.yml", root / ".ci" / "run"]
    me = Path(__file__).resolve()
    return sorted(p for p in files if p.is_file() and p.resolve() != me)


def defined_errata(errata: Path = ERRATA) -> set[int]:
    """The numbers ``n`` for which ``errata`` has ``<a id="e<n>"></a>`` followed by a ``## E<n> ·`` heading."""
    lines = errata.read_text(encoding="utf-8").splitlines()
    found = set()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"<a id=\"e(\d+)\"></a>", line.strip())
        if m and i + 1 < len(lines) and re.match(rf"## E{m.group(1)} · \S", lines[i + 1]):
            found.add(int(m.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading (lower case, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Explicit ``<a id>`` anchors and heading anchors of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return set(ANCHOR_ID.findall(text)) | {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def problems(path: Path, text: str, errata: set[int]) -> list[str]:
    """What is wrong with the references in ``text`` (the contents of ``path``), one line per finding."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{lineno}"
        for pattern, why in OUTSIDE:
            if m := pattern.search(line):
                found.append(f"{where}: {m.group(0)!r} is {why}")
        for m in ERRATA_WORDS.finditer(line):
            found.append(f"{where}: {m.group(0)!r}: cite errata by number as 'E{m.group(1)}' (docs/ERRATA.md)")
        for m in E_REF.finditer(NOQA.sub("", line)):
            if int(m.group(1)) not in errata:
                found.append(f"{where}: {m.group(0)} is not defined in docs/ERRATA.md")
        if not (path.suffix == ".md" or (path.suffix == ".py" and line.lstrip().startswith("#"))):
            continue  # Markdown links live in .md files and in the chapters' markdown cells (# comments)
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # a URL (https:, mailto:, ...)
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part) if file_part else path
            if not dest.exists():
                found.append(f"{where}: link to {target!r}: {dest} does not exist")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                found.append(f"{where}: link to {target!r}: {dest.name} has no anchor #{fragment}")
    return found


def test_errata_file_defines_a_numbered_sequence():
    numbers = defined_errata()
    assert numbers, "docs/ERRATA.md defines no erratum (<a id=\"e1\"></a> before '## E1 · ...')"
    assert numbers == set(range(1, max(numbers) + 1)), f"errata numbers have gaps: {sorted(numbers)}"
    assert len(numbers) >= 16, "E1-E12 (the paper's errata) and E13-E16 (the FFTD choices) must be defined"


def test_the_scan_covers_what_a_learner_reads():
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    for expected in ("README.md", "SYLLABUS.md", "docs/PAPER.md", "docs/ERRATA.md", "fftd_course/diffusion.py",
                     "solutions/06_ddim_math.py", "notebooks/06_ddim_math.py", "tests/test_diffusion.py"):
        assert expected in names


def test_every_reference_resolves_inside_the_repository():
    errata = defined_errata()
    found = [p for path in scanned_files() for p in problems(path, path.read_text(encoding="utf-8"), errata)]
    assert not found, "references that do not resolve inside the repository:\n" + "\n".join(found)


# ---- the scanner catches planted violations ----------------------------------------------------------

CLEAN = """\
Eq. 14 as printed has no minimum (E3; see [the errata](docs/ERRATA.md#e3) and [the paper](docs/PAPER.md)).
lr 1e-4, beta 2E-3, digest = hashlib.sha1(), a CPU shared with other jobs, taming issue #57,
[DiT](https://github.com/facebookresearch/DiT/blob/main/models.py)
import torch  # noqa: E402
"""


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, set[int]]:
    """A small repository in ``tmp_path``: docs/ERRATA.md defining E1-E3, docs/PAPER.md, README.md."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ERRATA.md").write_text("".join(f'<a id="e{n}"></a>\n## E{n} · title {n}\n\ntext\n\n' for n in (1, 2, 3)),
                                    encoding="utf-8")
    (docs / "PAPER.md").write_text("# The paper\n\n## 1. Overview\n", encoding="utf-8")
    return tmp_path / "README.md", defined_errata(docs / "ERRATA.md")


def test_planted_clean_text_passes(planted):
    readme, errata = planted
    assert errata == {1, 2, 3}
    assert problems(readme, CLEAN, errata) == []


@pytest.mark.parametrize("bad, expect", [
    ("see ../shared/paper/DIGEST.md section 7", "outside the repository"),
    ("as in `shared/design/COURSE.md`", "outside the repository"),
    ("the DIGEST's equations", "private paper notes"),
    ('REFERENCES "Diffusion and DDIM"', "private notes"),
    ("measured in this issue's report", "issue tracker"),
    ("the training guard (deliverable 6)", "issue tracker"),
    ("eq. 14 (errata 3)", "cite errata by number as 'E3'"),
    ("DIGEST errata 10", "cite errata by number as 'E10'"),
    ("the FFTD block (E4, E13)", "E13 is not defined"),
    ("[missing](docs/NOPE.md)", "does not exist"),
    ("![picture](docs/missing.png)", "does not exist"),
    ("[bad anchor](docs/ERRATA.md#e9)", "has no anchor #e9"),
    ("[bad heading](docs/PAPER.md#2-ivq-vae)", "has no anchor #2-ivq-vae"),
])
def test_planted_violation_is_caught(planted, bad, expect):
    readme, errata = planted
    readme.write_text(CLEAN + bad + "\n", encoding="utf-8")
    found = problems(readme, readme.read_text(encoding="utf-8"), errata)
    assert len(found) >= 1 and all(f":5:" in f for f in found), found
    assert any(expect in f for f in found), found


def test_planted_anchor_to_a_real_heading_passes(planted):
    readme, errata = planted
    assert problems(readme, "[overview](docs/PAPER.md#1-overview)\n", errata) == []


def test_planted_violation_in_a_python_file_is_caught(tmp_path):
    module = tmp_path / "module.py"
    text = '"""Choices the paper leaves open (``shared/paper/DIGEST.md`` section 7).\n\n* errata 4: two units."""\n'
    module.write_text(text, encoding="utf-8")
    found = problems(module, text, {4})
    assert any("outside the repository" in f for f in found) and any("'E4'" in f for f in found), found
