"""A real browser on what a learner sees. Run by `make test-browser` only (`make test` never collects this folder).

1. `make lab` (JupyterLab on loopback, a free port and a random token, no browser of its own): a double-click on
   `solutions/06_ddim_math.py` in the file browser opens it as a NOTEBOOK (jupytext pairs it with the .ipynb;
   `jupyter_config/labconfig/default_setting_overrides.json` makes that the default viewer), Run All Cells ends
   with every code cell executed and no error output, and the timestep slider redraws its plot when it moves.
2. The html site (`make html` writes site/index.html and site/NN_name.html): served on loopback, the course map
   and one chapter page load, and every plot on them (an img element) loads; the architecture diagrams of
   chapters 05, 07, 08 and 09 (fftd_course.diagrams) and chapter 09's generator picture load, one screenshot each.

Headless Chromium is the system's (FFTD_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH;
`make test-browser` installs Debian's `chromium` when none is found), driven by Playwright's sync API with
`executable_path=`: Playwright's own browser downloads are never used. Screenshots and server logs go to
test-artifacts/. Without Chromium or Playwright the tests skip, or fail under FFTD_BROWSER_REQUIRED=1 (as
`make test-browser` runs them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SITE = ROOT / "site"
CHAPTER = "06_ddim_math"

SECOND = 1000  # Playwright timeouts are in milliseconds
SERVER_START_S = 180
PAGE_TIMEOUT = 180 * SECOND      # JupyterLab's first load and a kernel start, on a busy 2-core machine
RUN_ALL_TIMEOUT = 20 * 60 * SECOND  # Run All of chapter 06 took 16 s on a busy shared 2-core CPU; generous, bounded
REDRAW_TIMEOUT = 120 * SECOND


def _unavailable(message: str):
    """Skip, or fail where the browser run is required (`make test-browser` sets FFTD_BROWSER_REQUIRED=1)."""
    if os.environ.get("FFTD_BROWSER_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _find_chromium() -> str | None:
    path = os.environ.get("FFTD_CHROMIUM")
    if path:
        return path if os.access(path, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for a parent do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _start(cmd: list[str], log: Path, env: dict[str, str], ready_url: str, headers: dict[str, str] | None = None):
    """Start ``cmd`` in its own process group, logging to ``log``; return it once ``ready_url`` answers 200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while not _http_ok(ready_url, headers):
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)!r} exited with code {proc.returncode} before serving; "
                               f"its log ({log}) ends:\n{_tail(log)}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"{' '.join(cmd)!r} did not answer {ready_url} within {SERVER_START_S} s; "
                               f"its log ({log}) ends:\n{_tail(log)}")
        time.sleep(0.5)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait up to 30 s for it to shut down, then SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the group's id is the leader's pid
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            if not _group_alive(pgid):
                break
            time.sleep(0.2)
        if not _group_alive(pgid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _kernel_pythons(runtime_dir: Path) -> list[str]:
    """The executables of the kernels whose connection files lie in ``runtime_dir`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "ipykernel_launcher" in argv and any(a.startswith(str(runtime_dir)) for a in argv):
            found.append(argv[0])
    return found


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed: run `make test-browser` (it installs the `browser` extra).")
    chromium = _find_chromium()
    if chromium is None:
        _unavailable("No Chromium found (FFTD_CHROMIUM, chromium, chromium-browser, google-chrome): run "
                     "`make test-browser`, which installs Debian's chromium package, or set FFTD_CHROMIUM=/path.")
    with sync_playwright() as p:
        # Playwright adds --no-sandbox (CI runs as root); small containers have a tiny /dev/shm. No host name
        # resolves, so nothing downloads and no page waits on the internet (the servers are on 127.0.0.1).
        # (Not Playwright's request routing: with the sync API its handlers only run while Playwright is called.)
        b = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            yield b
        finally:
            b.close()


@dataclass
class Lab:
    url: str
    token: str
    runtime_dir: Path

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_for_idle_kernel(self, path: str, timeout_s: float = PAGE_TIMEOUT / SECOND) -> None:
        """Wait until the notebook at ``path`` has a session whose kernel has started and is idle."""
        deadline, seen = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            seen = [(s.get("path"), (s.get("kernel") or {}).get("execution_state")) for s in self.api("/api/sessions")]
            if (path, "idle") in seen:
                return
            time.sleep(0.5)
        pytest.fail(f"no idle kernel for {path} after {timeout_s:.0f} s (sessions: {seen})", pytrace=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """`make lab` as a learner starts it, on loopback with a random token, stopped (kernels too) afterwards.

    The Jupyter user directories are fresh temporary ones, so nothing of this machine's own Jupyter setup
    (kernels, settings, saved workspaces) takes part; their only content is autosave off, so that running
    the chapter never writes outputs into the committed .py/.ipynb pair. The repository's setting overrides
    (jupyter_config/) are what is under test; a user setting of one key leaves the others' defaults alone.
    """
    if shutil.which("make") is None:
        _unavailable("`make` is not installed; the browser test starts JupyterLab with `make lab`.")
    if not (ROOT / ".venv" / ".lab-installed").exists():
        _unavailable("JupyterLab is not installed in .venv: run `make test-browser` (it runs `make lab`).")
    home = tmp_path_factory.mktemp("jupyter")
    settings = home / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    env = {k: v for k, v in os.environ.items()
           # What a learner's `make lab` has: checks lenient, live sliders, the inline plot backend.
           if k not in ("FFTD_STRICT_CHECKS", "FFTD_STATIC_PLOTS", "MPLBACKEND", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    port, token = _free_port(), secrets.token_hex(16)
    opts = (f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token}")
    url = f"http://127.0.0.1:{port}"
    proc = _start(["make", "--no-print-directory", "lab", f"LAB_OPTS={opts}"], artifacts / "jupyter-lab.log", env,
                  f"{url}/api/status", {"Authorization": f"token {token}"})
    server = Lab(url, token, home / "runtime")
    try:
        yield server
    finally:
        try:  # shut the kernels down through the server: they run in process groups of their own
            for session in server.api("/api/sessions"):
                server.api(f"/api/sessions/{session['id']}", method="DELETE")
        except (urllib.error.URLError, OSError, ValueError):
            pass
        _stop(proc)


@pytest.fixture(scope="module")
def site_url(artifacts):
    """site/ (the `make html` output) served on loopback with `python -m http.server`."""
    if not (SITE / "index.html").exists():
        has_target = re.search(r"^html\s*:", (ROOT / "Makefile").read_text(), flags=re.M) is not None
        message = ("site/index.html is missing: `make html` did not write it" if has_target else
                   "site/index.html is missing and the Makefile has no `html` target yet (it comes with the "
                   "html site work): the site checks are skipped")
        if has_target:
            _unavailable(message)
        pytest.skip(message)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(SITE)],
                  artifacts / "site-server.log", dict(os.environ), f"{url}/index.html")
    try:
        yield url
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------------- helpers

def _offline_page(browser, width: int, height: int):
    """A page in a fresh context, and two lists that fill as it runs: the URLs it requested, and those of its
    requests beyond loopback (which fail at once: the browser resolves no host name, see ``browser``)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    requested: list[str] = []
    outside: list[str] = []
    context.on("request", lambda r: requested.append(r.url))
    context.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:"))
               else outside.append(r.url))
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT)
    return page, requested, outside


# The notebook's state as a learner reads it: prompts ([ ], [*], [n]), the kernel indicator, and the outputs.
_NOTEBOOK_STATE_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')].map(c => ({
    prompt: (c.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
    empty: c.querySelector('.cm-content') !== null && c.querySelector('.cm-content').textContent.trim() === '',
  }));
  const stderr = [...panel.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent);
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status || null;
  return {cells, stderr, status};
}
"""
# An IPython error output ends with its exception's line ("ValueError: ...", "KeyboardInterrupt").
_ERROR_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", flags=re.M)


def _errors(stderr: list[str]) -> list[str]:
    return [t for t in stderr if "Traceback" in t or _ERROR_LINE.search(t)]


def _run_all_finished(page) -> dict:
    """Wait until no cell is queued or running and either every code cell ran or an error stopped the run."""
    page.wait_for_function(
        """([stateJs, errorRe]) => {
          const s = eval(stateJs)();
          if (!s || s.cells.length === 0 || s.status !== 'idle') return false;
          if (s.cells.some(c => c.prompt.includes('*'))) return false;
          const err = new RegExp(errorRe, 'm');
          if (s.stderr.some(t => t.includes('Traceback') || err.test(t))) return true;
          return s.cells.every(c => c.empty || /\\[\\d+\\]/.test(c.prompt));
        }""",
        arg=[_NOTEBOOK_STATE_JS, _ERROR_LINE.pattern], timeout=RUN_ALL_TIMEOUT, polling=1000)
    return page.evaluate(_NOTEBOOK_STATE_JS)


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(menu)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).click()


def _no_dialog(page, when: str) -> None:
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        pytest.fail(f"JupyterLab showed a dialog {when}: {dialog.first.inner_text()!r}", pytrace=False)


def _log(path: Path, page_errors: list[str], refused: list[str], summary: str = "") -> None:
    path.write_text(summary + "JavaScript errors:\n" + "".join(f"  {e}\n" for e in page_errors)
                    + "requests beyond loopback (refused):\n" + "".join(f"  {u[:200]}\n" for u in refused))


def _images_loaded(page, what: str, at_least: int) -> int:
    """Load every img of the page (lazy ones too) and fail naming those that did not decode; returns the count."""
    page.evaluate("() => document.querySelectorAll('img[loading=\"lazy\"]').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=PAGE_TIMEOUT)
    images = page.evaluate("() => [...document.images].map(i => ({src: (i.currentSrc || i.src).slice(0, 100),"
                           " w: i.naturalWidth}))")
    broken = [i["src"] for i in images if not i["w"] > 0]
    assert len(images) >= at_least, f"{what}: expected at least {at_least} plot(s) (img), found {len(images)}"
    assert not broken, f"{what}: {len(broken)} of {len(images)} images did not load: {broken[:5]}"
    return len(images)


# --------------------------------------------------------------------------------------------------- tests

def test_lab_opens_chapter_06_py_as_a_notebook_runs_all_and_its_slider_redraws(browser, lab, artifacts):
    pair = [ROOT / "solutions" / f"{CHAPTER}.py", ROOT / "solutions" / f"{CHAPTER}.ipynb"]
    before = {p: p.read_bytes() for p in pair}
    timings: dict[str, object] = {}
    page, requested, refused = _offline_page(browser, 1400, 1000)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        t0 = time.monotonic()
        page.goto(f"{lab.url}/lab?token={lab.token}")
        listing = page.locator(".jp-DirListing-content")
        listing.get_by_text("solutions", exact=True).dblclick()
        # What a learner does: double-click the chapter's .py (not its .ipynb) in the file browser.
        listing.get_by_text(f"{CHAPTER}.py", exact=True).dblclick()
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
        tab.filter(has_text=f"{CHAPTER}.py").wait_for()
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        editor = page.locator(".jp-FileEditor:not(.lm-mod-hidden)")
        page.wait_for_function("() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)') || "
                               "document.querySelector('.jp-FileEditor:not(.lm-mod-hidden)')")
        assert editor.count() == 0 and notebook.count() == 1, (
            f"{CHAPTER}.py opened in the text editor, not as a notebook: JupyterLab's default viewer for "
            "Python files should be 'Jupytext Notebook' (jupyter_config/labconfig/default_setting_overrides.json, "
            "found through JUPYTER_CONFIG_PATH that `make lab` sets)")
        lab.wait_for_idle_kernel(f"solutions/{CHAPTER}.py")
        notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
        _no_dialog(page, "after the chapter opened (a kernel choice? the .venv kernel 'python3' should start)")
        if Path("/proc").is_dir():  # the kernel is the project's .venv Python (make lab runs .venv/bin/jupyter)
            pythons = _kernel_pythons(lab.runtime_dir)
            assert pythons and all(Path(x).parent == ROOT / ".venv" / "bin" for x in pythons), (
                f"the chapter's kernel runs {pythons}, not {ROOT / '.venv' / 'bin'}/python")
        timings["open_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        _menu(page, "Run", "Run All Cells")
        state = _run_all_finished(page)
        timings["run_all_s"] = time.monotonic() - t0
        code_cells = sum(c["cell_type"] == "code" for c in json.loads(before[pair[1]])["cells"])
        assert len(state["cells"]) == code_cells, (
            f"the notebook shows {len(state['cells'])} code cells, its .ipynb holds {code_cells}")
        errors = _errors(state["stderr"])
        assert not errors, f"Run All Cells showed {len(errors)} error output(s); the first:\n{errors[0][-3000:]}"
        not_run = {i: c["prompt"] for i, c in enumerate(state["cells"])
                   if not c["empty"] and not re.search(r"\[\d+\]", c["prompt"])}
        assert not not_run, f"code cells did not run (cell index: prompt): {not_run}"
        _no_dialog(page, "after Run All Cells")
        news = page.locator(".Toastify__toast", has_text=re.compile("news", re.I))
        assert news.count() == 0, "JupyterLab asked about its news feed; the overrides should set fetchNews 'false'"
        asked = [u for u in requested if "/lab/api/news" in u or "/lab/api/update" in u]
        assert not asked, f"JupyterLab fetched news or update checks ({asked}); the overrides should turn both off"

        # Chapter 06's timestep slider (viz.explore: an ipywidgets SelectionSlider inside interact).
        interact = notebook.locator(".widget-interact").first
        interact.scroll_into_view_if_needed()
        handle = interact.locator(".noUi-handle").first
        readout = interact.locator(".widget-readout").first
        image = interact.locator(".widget-output img").first
        image.wait_for()
        page.wait_for_timeout(500)  # let the layout settle before the picture
        page.screenshot(path=str(artifacts / "01_lab_ch06_after_run_all.png"))
        src_before, value_before = image.get_attribute("src"), readout.inner_text()

        t0 = time.monotonic()
        handle.focus()
        page.keyboard.press("ArrowRight")  # noUiSlider's keyboard step: the next value of t
        page.wait_for_function(
            """old => { const img = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) '
                         + '.widget-interact .widget-output img');
                        return img !== null && img.complete && img.naturalWidth > 0 && img.src !== old; }""",
            arg=src_before, timeout=REDRAW_TIMEOUT, polling=250)
        timings["redraw_s"] = time.monotonic() - t0
        value_after = readout.inner_text()
        assert value_after != value_before, f"the slider's readout stayed {value_before!r} after ArrowRight"
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "02_lab_ch06_slider_moved.png"))
        timings["slider"] = f"t {value_before} -> {value_after}"
    finally:
        (artifacts / "lab-timings.json").write_text(json.dumps(timings, indent=1))
        _log(artifacts / "lab-browser.log", page_errors, refused)
        page.context.close()
        changed = [p.name for p in pair if p.read_bytes() != before[p]]
        for p in pair:
            if p.name in changed:
                p.write_bytes(before[p])
    assert not changed, f"the browser run changed {changed} (restored): autosave should be off in the test"


def test_site_course_map_and_a_chapter_page_show_their_plots(browser, site_url, artifacts):
    page, _, refused = _offline_page(browser, 1280, 1000)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    summary = ""
    try:
        response = page.goto(f"{site_url}/index.html", wait_until="load")
        assert response is not None and response.ok, f"site/index.html: HTTP {response and response.status}"
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.getAttribute('href'))")
        chapters = sorted({h.split("#")[0] for h in hrefs if re.fullmatch(r"(\./)?\d\d_\w+\.html(#.*)?", h)})
        assert chapters, f"the course map links no chapter page (NN_name.html); its links: {hrefs[:20]}"
        dead = [h for h in chapters if not page.request.get(f"{site_url}/{h.removeprefix('./')}").ok]
        assert not dead, f"the course map links chapter pages that do not load: {dead}"
        summary += f"index.html: links {len(chapters)} chapter pages, {_images_loaded(page, 'index.html', 0)} images\n"
        page.screenshot(path=str(artifacts / "03_site_course_map.png"), full_page=True)

        chapter = next((h for h in chapters if CHAPTER in h), chapters[0])
        response = page.goto(f"{site_url}/{chapter.removeprefix('./')}", wait_until="load")
        assert response is not None and response.ok, f"{chapter}: HTTP {response and response.status}"
        summary += f"{chapter}: {_images_loaded(page, chapter, at_least=1)} images, all loaded\n"
        height = page.evaluate("() => document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(height, 12000)}  # a screenshot of a sane size
        page.screenshot(path=str(artifacts / f"04_site_{Path(chapter).stem}.png"), full_page=True, clip=clip)
    finally:
        # Offline, the pages' scripts from CDNs (MathJax) are refused: logged, not failures; the plots are local.
        _log(artifacts / "site-browser.log", page_errors, refused, summary)
        page.context.close()


# The architecture pictures (fftd_course.diagrams) and chapter 09's live generator, as the site shows them: the
# chapter page, the code cell that draws the picture, and its output image; one screenshot of each picture.
SITE_PICTURES = [("05_ivqvae", "ivqvae_diagram("), ("07_adaptive_fusion", "adaptive_fusion_diagram("),
                 ("08_fftd", "fftd_block_diagram("), ("08_fftd", "hourglass_diagram("),
                 ("09_latent_diffusion", "pipeline_diagram("), ("09_latent_diffusion", "live_generator(")]


def test_site_chapter_pages_show_the_architecture_diagrams(browser, site_url, artifacts):
    page, _, refused = _offline_page(browser, 1280, 1000)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    summary = ""
    try:
        for stem in dict.fromkeys(stem for stem, _ in SITE_PICTURES):
            response = page.goto(f"{site_url}/{stem}.html", wait_until="load")
            assert response is not None and response.ok, (
                f"{stem}.html: HTTP {response and response.status} (is the site a full `make html` build?)")
            _images_loaded(page, f"{stem}.html", at_least=1)
            for _, call in (p for p in SITE_PICTURES if p[0] == stem):
                cell = page.locator(".jp-CodeCell", has_text=call).first
                assert cell.count(), f"{stem}.html: no code cell calls {call}...)"
                image = cell.locator(".jp-OutputArea-output img").first
                assert image.count(), f"{stem}.html: the cell that calls {call}...) shows no picture"
                image.scroll_into_view_if_needed()
                width = image.evaluate("i => i.complete ? i.naturalWidth : 0")
                assert width > 400, f"{stem}.html: the picture of {call}...) did not load (width {width})"
                name = call.rstrip("(")
                image.screenshot(path=str(artifacts / f"05_site_{stem}_{name}.png"))
                summary += f"{stem}.html: {name}, {width} px wide\n"
    finally:
        _log(artifacts / "site-diagrams-browser.log", page_errors, refused, summary)
        page.context.close()
