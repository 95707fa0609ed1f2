# The course's commands. Each target creates the virtual environment .venv first if it is missing.
#   make test      unit tests + every chapter executed (notebooks/ and solutions/) + sync checks
#   make demo      train both stages on the toy faces on the CPU, sample every class, measure; writes demo/
#   make weights   remake the toy checkpoint committed in fftd_course/weights/ (same training as the demo)
#   make lab       JupyterLab on the course
#   make test-browser  headless Chromium drives `make lab` (chapter 06: Run All, its slider) and the html site
#   make release   regenerate student notebooks and .ipynb pairs from solutions/*.py (a student notebook holding
#                  a learner's edits is kept and reported; FORCE=1 replaces it after a backup in backups/)
#   make html      execute every solution chapter and write the course as a static site: site/index.html
#   make syllabus  copy the chapter times of the last `make test` into SYLLABUS.md (and docs/chapter-times.json)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Failed exercise checks raise during tests (stubs still only print "not attempted yet");
# sliders draw static pictures, since nobody can move them during a test run.
# On a CPU shared with other busy processes, PyTorch's spinning OpenMP threads can make the small-tensor
# chapters 10-50x slower; `OMP_WAIT_POLICY=PASSIVE make test` avoids that there. It is not the default: on
# a quiet machine (CI) it made chapter 03 1.4x and chapter 05's training 2x slower (2-core machine).
TEST_ENV := FFTD_STRICT_CHECKS=1 FFTD_STATIC_PLOTS=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1

.PHONY: test test-browser demo weights lab release check-sync html syllabus clean

$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

$(VENV)/.lab-installed: $(VENV)/.dev-installed
	$(PY) -m pip install -e ".[dev,lab]"
	touch $@

# Playwright only: it drives the system's Chromium (browser_tests/ensure_chromium.sh), never its own downloads.
$(VENV)/.browser-installed: $(VENV)/.lab-installed
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install -e ".[dev,lab,browser]"
	touch $@

test: $(VENV)/.dev-installed
	$(TEST_ENV) $(PY) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env --durations=5

demo: $(VENV)/.dev-installed
	PYTHONUNBUFFERED=1 $(PY) -m fftd_course.demo

# The toy generator the chapters load (pipeline.load_toy), float16, with its provenance .json beside it;
# it is the demo run (same defaults, demo/ rewritten) measured on the saved copy.
weights: $(VENV)/.dev-installed
	PYTHONUNBUFFERED=1 $(PY) -m fftd_course.demo --save-weights fftd_course/weights/toy_latent_diffusion.pt

# Containers often run as root, which JupyterLab refuses unless told.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

# jupyter_config/labconfig/default_setting_overrides.json (found through JUPYTER_CONFIG_PATH) changes two
# defaults: chapters' .py files open as notebooks (jupytext pairs them with the .ipynb) and JupyterLab asks
# no questions about news. A learner's own settings still win. LAB_OPTS: extra options (browser tests).
LAB_ENV := JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter_config$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))"
LAB_OPTS ?=

lab: $(VENV)/.lab-installed
	$(LAB_ENV) $(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_FLAGS) $(LAB_OPTS)

# A real browser on what a learner sees: browser_tests/test_browser.py starts `make lab` and a server for the
# html site (built by `make html` when site/ is missing), drives headless Chromium, saves screenshots in
# test-artifacts/. Not part of `make test` (it needs Chromium: installed with apt-get when missing).
test-browser: $(VENV)/.browser-installed
	@set -e; chromium="$$(sh browser_tests/ensure_chromium.sh)"; echo "test-browser: Chromium: $$chromium"; \
	if [ ! -f site/index.html ]; then \
	  if $(MAKE) -n html >/dev/null 2>&1; then $(MAKE) html; \
	  else echo "test-browser: no site/index.html and no 'make html' target: the site checks will be skipped"; fi; \
	fi; \
	FFTD_CHROMIUM="$$chromium" FFTD_BROWSER_REQUIRED=1 PYTHONUNBUFFERED=1 $(PY) -m pytest browser_tests -v --durations=5

release: $(VENV)/.dev-installed
	$(PY) -m fftd_course.course.assignments release $(if $(FORCE),--force,)

check-sync: $(VENV)/.dev-installed
	$(PY) -m fftd_course.course.assignments check

# One page per chapter (site/NN_name.html) with every output and plot embedded, and the course map site/index.html.
# Chapters run as under `make test` (static pictures for sliders, failed checks stop the build);
# `$(PY) -m fftd_course.course.site --chapters 00,06` rebuilds a few.
html: $(VENV)/.dev-installed
	PYTHONUNBUFFERED=1 $(PY) -m fftd_course.course.site --out site

syllabus: $(VENV)/.dev-installed
	$(PY) -m fftd_course.course.syllabus update

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site test-artifacts
