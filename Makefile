# Quickstart: `make demo` scans the bundled example archive; `make test` runs the tests;
# `make test-fast` runs the quick unit tests (no slow, Ray, browser or subprocess test).
# Both create .venv when it is missing and install the project into it once (a stamp file
# records the install; it is redone when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
# Optional extras to install with the project: .ci/run adds ray so that the Ray engine's tests run.
EXTRAS ?= test
PY := $(VENV)/bin/python
STAMP := $(VENV)/.audit-installed

.PHONY: demo test test-fast install

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/audit scan examples/cifake-sample --labels folders --out reports/demo

# pytest's own exit code is make's: 1 failures, 2 interrupted, 5 no tests collected.
test: $(STAMP)
	$(PY) -m pytest -q

FAST := not slow and not ray and not browser and not subprocess

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST)"
