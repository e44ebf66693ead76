# The two commands a newcomer types are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test lint demo demo-model bench clean

install: $(STAMP)

# The stamp makes a second `make install` with nothing to do finish in seconds.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) -m stream.demo

clean:
	rm -rf runs demo_out* demo_events.jsonl .pytest_cache
