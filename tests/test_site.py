"""`make html` (fftd_course.course.site): the site built for one fast chapter, and the builder's parts.

Building every chapter takes as long as running them all (`make html`); this builds one into a temporary
folder and checks what a reader relies on: the course map lists every chapter, the page shows its plots as
embedded images, no cell failed, and every link between pages leads to a page that exists.
"""

import html
import re
from pathlib import Path

import nbformat
import pytest

from fftd_course.course import site

ROOT = Path(__file__).resolve().parent.parent
# The fastest chapter with a plot, measured on the project's shared 2-core CPU (see the commit that chose it).
FAST = "07"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    site.build(out, ROOT, only=[FAST], progress=False)
    return out


def _fast_page(out: Path) -> Path:
    chapter = next(ch for ch in site.find_chapters(ROOT) if ch.number == FAST)
    return out / chapter.page


def test_index_lists_every_chapter_of_solutions(built):
    index = (built / "index.html").read_text(encoding="utf-8")
    chapters = site.find_chapters(ROOT)
    assert [ch.stem for ch in chapters] == [p.stem for p in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py"))]
    for ch in chapters:
        assert html.escape(ch.title, quote=False) in index, f"{ch.stem} is missing from the course map"
        assert ch.summary, f"{ch.stem}: no one-line summary found in its first markdown cell"
    assert f'href="{_fast_page(built).name}"' in index
    assert "not built" in index                      # the other chapters are listed, without a dead link


def test_chapter_page_embeds_its_plots_and_has_no_error(built):
    page = _fast_page(built).read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="data:image/png;base64,', page), "no embedded plot on the chapter page"
    assert not re.search(r'<img[^>]+src="(?!data:)', page), "an image that is not embedded would break offline"
    assert "Traceback" not in page
    assert "application/vnd.jupyter.widget" not in page, "a widget left on a static page"


def test_every_link_between_pages_resolves(built):
    pages = sorted(built.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", _fast_page(built).name, "PAPER.html", "ERRATA.html"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        navs = re.findall(r'<nav class="fftd-nav">(.*?)</nav>', text, re.S)
        assert len(navs) == 2, f"{page.name}: navigation at the top and the bottom expected"
        assert 'href="index.html"' in navs[0]
        for target in re.findall(r'href="([^"#:]+\.html)(?:#[^"]*)?"', text):
            assert (built / target).exists(), f"{page.name} links to {target}, which was not written"


def test_intro_takes_the_title_and_the_first_sentence():
    title, summary = site._intro("# 03 · Vector quantization\n\nThe \"VQ\" in eq. 15 of it: a codebook. Then more.\n"
                                 "\n**In this chapter you will**\n- x", "03_vq")
    assert title == "03 · Vector quantization"
    assert summary == 'The "VQ" in eq. 15 of it: a codebook.'
    _, summary = site._intro("# 05 · X\n\nChapters 01-04 built the parts. This chapter joins them. More:", "05_x")
    assert summary == "Chapters 01-04 built the parts. This chapter joins them."
    _, summary = site._intro("# 04 · Y\n\nIt is trained with four terms (eq. 11-15):\n\n$$L$$", "04_y")
    assert summary == "It is trained with four terms (eq. 11-15)."


def test_links_into_the_repository_become_links_between_pages():
    stems = {"05_ivqvae"}
    assert site._rewrite_href("../docs/ERRATA.md#e1", stems) == "ERRATA.html#e1"
    assert site._rewrite_href("PAPER.md", stems) == "PAPER.html"
    assert site._rewrite_href("../notebooks/05_ivqvae.ipynb", stems) == "05_ivqvae.html"
    assert site._rewrite_href("https://arxiv.org/abs/1807.06521", stems) == "https://arxiv.org/abs/1807.06521"
    assert site._rewrite_href("#e3", stems) == "#e3"


def test_progress_bars_become_the_text_of_their_final_state():
    nb = nbformat.v4.new_notebook()
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    cell = nbformat.v4.new_code_cell("for _ in tqdm(range(40)): pass")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": view, "text/plain": "  0%|          | 0/40"})]
    nb.cells = [cell]

    def model(name, **state):
        return {"model_name": name, "state": dict(_model_name=name, **state)}

    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "box": model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"], layout="IPY_MODEL_lay"),
        "lay": model("LayoutModel"),
        "l": model("HTMLModel", value="training:\u2007100%"),
        "p": model("FloatProgressModel", value=40.0, max=40.0, min=0.0),
        "r": model("HTMLModel", value="\u200740/40\u2007[00:02&lt;00:00,\u200717.1it/s]"),
    }}}
    hidden = nbformat.v4.new_code_cell("for _ in tqdm(range(3), leave=False): pass")
    hidden.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": dict(view, model_id="gone"), "text/plain": "  0%|"})]
    nb.cells.append(hidden)
    nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].update({
        "gone": model("HBoxModel", children=[], layout="IPY_MODEL_gone_lay"),
        "gone_lay": model("LayoutModel", visibility="hidden")})
    site.widgets_to_text(nb)
    assert "widgets" not in nb.metadata
    bar = "training: 100%|██████████| 40/40 [00:02<00:00, 17.1it/s]"
    assert nb.cells[0].outputs[0]["data"] == {"text/plain": bar}
    assert nb.cells[1].outputs == []                 # a bar closed with leave=False leaves nothing


def test_a_failing_chapter_names_itself_and_its_cell(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / "00_boom.py").write_text("# %%\nx = 1\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · Boom\n\nIt fails."), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('the message')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, solutions / "00_boom.ipynb")
    with pytest.raises(site.SiteError) as info:
        site.build(tmp_path / "site", tmp_path, progress=False)
    message = str(info.value)
    assert "solutions/00_boom.ipynb" in message and "cell 3 of 3" in message
    assert "ValueError" in message and "the message" in message
    assert not (tmp_path / "site" / "00_boom.html").exists()
