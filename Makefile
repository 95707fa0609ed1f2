# The course's commands. Each target creates the virtual environment .venv first if it is missing.
#   make test      unit tests + every chapter executed (notebooks/ and solutions/) + sync checks
#   make lab       JupyterLab on the course
#   make release   regenerate student notebooks and .ipynb pairs from solutions/*.py

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Failed exercise checks raise during tests (stubs still only print "not attempted yet");
# sliders draw static pictures, since nobody can move them during a test run.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. On a CPU shared with other busy
# processes, PyTorch's spinning threads make small-tensor training 10-50x slower. Chapter 03 on the 2-core
# machine: quiet, 15.0 s spinning vs 21.6 s passive; beside a busy 2-thread process, >150 s vs 26 s.
TEST_ENV := FFTD_STRICT_CHECKS=1 FFTD_STATIC_PLOTS=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE

.PHONY: test lab release check-sync clean

$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

$(VENV)/.lab-installed: $(VENV)/.dev-installed
	$(PY) -m pip install -e ".[dev,lab]"
	touch $@

test: $(VENV)/.dev-installed
	$(TEST_ENV) $(PY) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env --durations=5

# Containers often run as root, which JupyterLab refuses unless told.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(VENV)/.lab-installed
	$(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_FLAGS)

release: $(VENV)/.dev-installed
	$(PY) -m fftd_course.assignments release

check-sync: $(VENV)/.dev-installed
	$(PY) -m fftd_course.assignments check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
