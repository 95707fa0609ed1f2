"""The course as a static web site: every solution chapter executed, its outputs and plots embedded.

Usage::

    python -m fftd_course.course.site                      # what `make html` runs: every chapter into site/
    python -m fftd_course.course.site --chapters 00,06     # only these chapters (the course map still lists all)
    python -m fftd_course.course.site --out /tmp/site --timeout 600

Each ``solutions/NN_name.ipynb`` runs in a fresh kernel started in ``solutions/`` (as ``make test`` runs it),
with ``FFTD_STATIC_PLOTS=1`` (sliders draw their static pictures) and ``FFTD_STRICT_CHECKS=1`` (a failed
exercise check stops the build); unlike ``make test`` it keeps matplotlib's inline backend, not ``Agg``, whose
figures would never reach the page. nbconvert's ``HTMLExporter`` turns it into
``NN_name.html`` with every plot embedded as a ``data:`` URI, so the pages work from ``file://`` and from any
static server (``python -m http.server``). The site also holds ``index.html``, the course map (each chapter's
title and the first sentence of its introduction), and ``PAPER.html`` / ``ERRATA.html`` rendered from
``docs/`` so that the chapters' links to them resolve. Every page has previous / course map / next links.
Mathematics is typeset by MathJax from a CDN when the reader is online; offline its LaTeX source stays
readable. Progress bars are shown as the text of their final state.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["SiteError", "Chapter", "find_chapters", "execute_chapter", "widgets_to_text", "build", "main"]

ROOT = Path(__file__).resolve().parents[2]  # the repository (fftd_course/course/ is two down)
# docs/NAME.md -> NAME.html, named so on the course map
DOCS = {"PAPER": "the paper in the course's words", "ERRATA": "its errata and open choices"}
# As `make test` runs the chapters, except for the plots: `make test` draws them with Agg (nowhere), a page needs
# them as images in the cell outputs, which the kernel's inline backend gives.
KERNEL_ENV = {"FFTD_STATIC_PLOTS": "1", "FFTD_STRICT_CHECKS": "1", "PYTHONUNBUFFERED": "1",
              "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
NAV_BEGIN, NAV_END = "<!-- fftd-nav:begin -->", "<!-- fftd-nav:end -->"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_HREF = re.compile(r'href="([^"]*)"')
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*\[`$])")

STYLE = """<style>
nav.fftd-nav { display: flex; justify-content: space-between; gap: 1em; max-width: 1200px; margin: 0.5em auto;
  padding: 0.5em 1em; font-family: system-ui, sans-serif; font-size: 0.95em; background: #f3f5f8;
  border: 1px solid #d8dde5; border-radius: 6px; }
nav.fftd-nav a { text-decoration: none; color: #1a5fb4; }
nav.fftd-nav span.fftd-none { color: #9aa3ad; }
p.fftd-built { max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #6b7480; font-size: 0.85em;
  font-family: system-ui, sans-serif; }
</style>"""


class SiteError(RuntimeError):
    """A chapter that cannot be found, executed or rendered; the message says which and what to do."""


@dataclass(frozen=True)
class Chapter:
    stem: str        # "05_ivqvae"
    notebook: Path   # solutions/05_ivqvae.ipynb
    title: str       # "05 · The IVQ-VAE, trained end to end"
    summary: str     # the first sentence of the introduction (markdown, may hold $maths$)

    @property
    def number(self) -> str:
        return self.stem[:2]

    @property
    def page(self) -> str:
        return f"{self.stem}.html"


def _intro(source: str, stem: str) -> tuple[str, str]:
    """Title (the first ``# `` heading) and the first sentence of the first paragraph after it.

    When the next sentence starts "This chapter" (the first one was about earlier chapters), both are kept.
    """
    lines = source.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), stem.replace("_", " "))
    paragraph: list[str] = []
    for line in lines[next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0):]:
        if not line.strip():
            if paragraph:
                break
            continue
        if line.lstrip().startswith(("#", "|", "- ", "* ", "$$", "1. ", "<")) and not paragraph:
            continue
        paragraph.append(line.strip())
    sentences = _SENTENCE_END.split(" ".join(paragraph)) if paragraph else [""]
    summary = sentences[0]
    if len(sentences) > 1 and sentences[1].startswith("This chapter"):
        summary += " " + sentences[1]          # "Chapters 01-04 built ... This chapter puts them together ..."
    return title, re.sub(r":$", ".", summary)


def find_chapters(root: Path = ROOT) -> list[Chapter]:
    """Every chapter of ``root/solutions`` (``NN_name.py`` with its paired ``NN_name.ipynb``), in order."""
    import nbformat

    from .sources import AssignmentError, chapter_sources

    try:
        sources = chapter_sources(root)
    except AssignmentError as e:
        raise SiteError(str(e)) from None
    chapters = []
    for source in sources:
        notebook = source.with_suffix(".ipynb")
        if not notebook.exists():
            raise SiteError(f"{notebook.relative_to(root)} is missing: run `make release` to pair it with its .py")
        nb = nbformat.read(notebook, as_version=4)
        first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
        title, summary = _intro(first, source.stem)
        chapters.append(Chapter(source.stem, notebook, title, summary))
    return chapters


def _kernel_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, **KERNEL_ENV)
    # The kernel imports the fftd_course that sits beside the chapters (a worktree's, not only the installed one).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def _first_line(source: str) -> str:
    line = next((s for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= 80 else line[:77] + "..."


def execute_chapter(chapter: Chapter, root: Path = ROOT, timeout: int = 600, progress: bool = True):
    """Run ``chapter``'s notebook top to bottom in a fresh kernel; returns ``(notebook, seconds)``.

    Raises :class:`SiteError` naming the chapter and the cell when a cell raises, runs past ``timeout``
    seconds, or the kernel dies.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from tqdm.auto import tqdm

    nb = nbformat.read(chapter.notebook, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    current = {"index": None}
    bar = tqdm(total=len(code_cells), desc=chapter.stem, unit="cell", disable=not progress, leave=False)

    def started(cell, cell_index, **_):
        current["index"] = cell_index

    def executed(cell, cell_index, **_):
        bar.update(1)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(chapter.notebook.parent)}},
                            on_cell_start=started, on_cell_executed=executed)
    rel = chapter.notebook.relative_to(root) if chapter.notebook.is_relative_to(root) else chapter.notebook
    start = time.perf_counter()
    try:
        client.execute(env=_kernel_env(root))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        i = current["index"]
        where = "before its first cell" if i is None else (
            f"in cell {i + 1} of {len(nb.cells)} (code cell {code_cells.index(i) + 1} of {len(code_cells)}), "
            f"which starts: {_first_line(nb.cells[i].source)}")
        what = {CellTimeoutError: f"it ran past the per-cell limit of {timeout} s (--timeout)",
                DeadKernelError: "the kernel died (out of memory?)"}.get(type(e), "it raised an error")
        detail = _ANSI.sub("", str(e)).strip()
        raise SiteError(f"chapter {rel} failed {where}: {what}.\n"
                        f"Run it in JupyterLab or with `make test` to see it fail there.\n\n{detail}") from e
    finally:
        bar.close()
    return nb, time.perf_counter() - start


def _plain(value: str) -> str:
    # tqdm writes figure spaces (U+2007) so that HTML keeps its padding.
    return html.unescape(re.sub(r"<[^>]+>", "", value or "")).replace("\u2007", " ")


def widgets_to_text(nb) -> None:
    """Replace widget outputs (tqdm's bars) by the text of their final state, and drop the widget state.

    A static page cannot run widgets (nbconvert would load a widget manager from a CDN to draw them), and the
    text a widget output carries was written when it appeared (a bar at 0%). The kernel's last word on each
    widget is in the notebook's widget state, which nbclient records while it runs the chapter.
    """
    state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def ref(value):
        return state.get(value[len("IPY_MODEL_"):], {}).get("state", {}) if isinstance(value, str) else {}

    def text(s: dict) -> str | None:
        if ref(s.get("layout")).get("visibility") == "hidden":    # a bar closed with leave=False
            return None
        name = s.get("_model_name", "")
        if name in ("HBoxModel", "VBoxModel", "BoxModel"):
            parts = [text(ref(child)) for child in s.get("children", [])]
            return "".join(p for p in parts if p)
        if name in ("FloatProgressModel", "IntProgressModel"):
            lo, hi, value = s.get("min", 0), s.get("max", 100), s.get("value", 0)
            frac = 0.0 if hi == lo else min(max((value - lo) / (hi - lo), 0.0), 1.0)
            return f"|{'█' * round(10 * frac):<10}|"      # tqdm writes the percentage into the text before it
        if "value" in s and isinstance(s["value"], str):
            return _plain(s["value"])
        return f"[{name.removesuffix('Model') or 'widget'}: open the notebook in JupyterLab to use it]"

    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view is None:
                outputs.append(out)
                continue
            shown = text(state.get(view.get("model_id"), {}).get("state", {}))
            if shown:
                out["data"] = {"text/plain": shown}
                outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs


def _rewrite_href(target: str, chapter_stems: set[str]) -> str:
    """Links that point into the repository become links between the site's pages."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
        return target
    path, _, fragment = target.partition("#")
    name = PurePosixPath(path)
    anchor = f"#{fragment}" if fragment else ""
    if name.suffix == ".md" and name.stem in DOCS:
        return f"{name.stem}.html{anchor}"
    if name.suffix in (".ipynb", ".py") and name.stem in chapter_stems:
        return f"{name.stem}.html{anchor}"
    return target


def _render(nb, title: str, path: Path, chapter_stems: set[str], footer: str = "") -> str:
    """A notebook as one self-contained HTML page, with the navigation slots and the link rewriting."""
    try:
        from nbconvert import HTMLExporter
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise SiteError("nbconvert is not installed: `pip install -e '.[dev]'` (`make html` does it)") from e
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title, "path": str(path)}})
    body = _HREF.sub(lambda m: 'href="{}"'.format(html.escape(_rewrite_href(html.unescape(m.group(1)), chapter_stems))),
                     body)
    slot = f"{NAV_BEGIN}{NAV_END}"
    body = body.replace("</head>", f"{STYLE}\n</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: f"{m.group(1)}\n{slot}", body, count=1)
    return body.replace("</body>", f"{footer}\n{slot}\n</body>", 1)


def _nav(prev: Chapter | None, nxt: Chapter | None) -> str:
    def link(ch: Chapter | None, arrow: str) -> str:
        if ch is None:
            return '<span class="fftd-none"></span>'
        label = f"{arrow} {html.escape(ch.title)}" if arrow == "←" else f"{html.escape(ch.title)} {arrow}"
        return f'<a href="{ch.page}">{label}</a>'

    return (f'{NAV_BEGIN}<nav class="fftd-nav">{link(prev, "←")}<a href="index.html">Course map</a>'
            f'{link(nxt, "→")}</nav>{NAV_END}')


def _set_nav(page: Path, nav: str) -> None:
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(NAV_BEGIN) + ".*?" + re.escape(NAV_END), re.S)
    if not pattern.search(text):
        raise SiteError(f"{page} has no navigation slot: delete it and build again")
    page.write_text(pattern.sub(lambda _: nav, text), encoding="utf-8")


def _machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPUs, PyTorch {torch.__version__}"


def _markdown_notebook(*sources: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _course_title(root: Path) -> str:
    readme = root / "README.md"
    if readme.exists():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return "FFTD course"


def _index(chapters: list[Chapter], built: set[str], root: Path) -> str:
    rows = []
    for ch in chapters:
        summary = ch.summary.replace("|", "\\|")
        title = f"[{ch.title}]({ch.page})" if ch.stem in built else (
            f"{ch.title} (not built: `python -m fftd_course.course.site --chapters {ch.number}`)")
        rows.append(f"| {title} | {summary} |")
    docs = " and ".join(f"[{what}]({name}.html)" for name, what in DOCS.items()
                        if (root / "docs" / f"{name}.md").exists())
    return "\n".join([
        f"# {_course_title(root)}",
        "",
        "Every chapter below was executed top to bottom (the complete version, from `solutions/`) and is shown "
        "with its outputs. To run the chapters and do the exercises yourself, open `notebooks/` in JupyterLab "
        "(`make lab`).",
        "",
        f"Also here: {docs}." if docs else "",
        "",
        "| chapter | what it is about |",
        "|---|---|",
        *rows,
    ])


def build(out: Path, root: Path = ROOT, only: list[str] | None = None, timeout: int = 600,
          progress: bool = True) -> list[Path]:
    """Execute and render the chapters numbered ``only`` (all when None) into ``out``; returns the pages written.

    The course map, the docs pages and every chapter page's navigation are rewritten each time, from the chapter
    pages present in ``out``, so that a partial build never leaves a link to a page that does not exist.
    """
    from tqdm.auto import tqdm

    chapters = find_chapters(root)
    stems = {ch.stem for ch in chapters}
    if only is not None:
        numbers = {ch.number for ch in chapters}
        unknown = [n for n in only if n not in numbers]
        if unknown:
            raise SiteError(f"no chapter numbered {', '.join(unknown)} in {root / 'solutions'} "
                            f"(there are {', '.join(sorted(numbers))})")
    todo = [ch for ch in chapters if only is None or ch.number in only]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if only is None:                                   # a full build: pages of chapters that are gone go too
        for page in out.glob("[0-9][0-9]_*.html"):
            if page.stem not in stems:
                page.unlink()
    machine = _machine()
    for ch in tqdm(todo, desc="chapters", unit="chapter", disable=not progress):
        nb, seconds = execute_chapter(ch, root, timeout, progress)
        widgets_to_text(nb)
        when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        footer = (f'<p class="fftd-built">Executed by <code>python -m fftd_course.course.site</code> on {when} in '
                  f"{seconds:.0f} s ({html.escape(machine)}).</p>")
        page = out / ch.page
        page.write_text(_render(nb, ch.title, ch.notebook.parent, stems, footer), encoding="utf-8")
        written.append(page)
        tqdm.write(f"{ch.page}: executed in {seconds:.1f} s")

    present = [ch for ch in chapters if (out / ch.page).exists()]
    for i, ch in enumerate(present):
        _set_nav(out / ch.page, _nav(present[i - 1] if i else None, present[i + 1] if i + 1 < len(present) else None))
    built = {ch.stem for ch in present}
    first = present[0] if present else None
    for name in DOCS:
        source = root / "docs" / f"{name}.md"
        if source.exists():
            page = out / f"{name}.html"
            text = source.read_text(encoding="utf-8")
            title, _ = _intro(text, name)
            page.write_text(_render(_markdown_notebook(text), title, source.parent, stems), encoding="utf-8")
            _set_nav(page, _nav(None, first))
            written.append(page)
    index = out / "index.html"
    index.write_text(_render(_markdown_notebook(_index(chapters, built, root)), _course_title(root), root, stems),
                     encoding="utf-8")
    _set_nav(index, _nav(None, first))
    written.append(index)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fftd_course.course.site",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("site"), help="folder to write the site into (default: site)")
    parser.add_argument("--chapters", default=None,
                        help="comma-separated chapter numbers to (re)build, e.g. 00,06 (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default: 600)")
    parser.add_argument("--root", type=Path, default=None,
                        help="course repository (default: the current folder if it has solutions/, else this package's)")
    args = parser.parse_args(argv)
    from .sources import course_root  # noqa: PLC0415 (jupytext only when run)

    root = course_root(args.root)
    only = None if args.chapters is None else [n.strip().zfill(2) for n in args.chapters.split(",") if n.strip()]
    start = time.perf_counter()
    try:
        build(args.out, root.resolve(), only, args.timeout)
    except SiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"site written to {args.out / 'index.html'} in {time.perf_counter() - start:.0f} s; "
          f"open it in a browser, or serve it with `python -m http.server -d {args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
