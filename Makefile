# The two commands a newcomer types are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test lint demo demo-multi demo-model bench clean

install: $(STAMP)

# The stamp makes a second `make install` with nothing to do finish in seconds.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's formatter is the one style: no hand alignment to protect, nothing to argue about.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# About 10 seconds after install: render an unseen test video, stream it through the committed
# demo model, score the smoothed label against the ground truth, write the pictures.
demo: install
	$(PY) scripts/demo.py $(DEMO_ARGS)

# Four generated cameras in one epic-stream process (one shared model session), and the picture
# of the window's grid: demo_multi/demo_multi_grid.png. About 15 seconds after install.
demo-multi: install
	$(PY) scripts/multistream_demo.py --out demo_multi $(DEMO_ARGS)

# Rebuilds stream/models/demo.onnx (package data) from nothing: seeded synthetic data ->
# configs/demo.yaml -> export of the best checkpoint (the fit's own model.onnx). 5-15 minutes on
# 2 CPU cores, depending on what else runs.
demo-model: install
	rm -rf data/synth runs/demo
	$(PY) -m train synth --out data/synth --seed 0
	$(PY) -m train fit --config configs/demo.yaml --data.data_path data/synth --trainer.default_root_dir runs/demo
	cp runs/demo/model.onnx stream/models/demo.onnx
	$(PY) -c "from stream.contract import load_contract; print(load_contract('stream/models/demo.onnx'))"

# Not part of `make test`. Quick by default (section 13, CPU efficiency, alone takes about 15 minutes
# on 2 cores); FULL=1 runs everything.
# ONLY="efficiency inference" reruns those sections and keeps the others' figures in RESULTS.md.
bench: install
	$(PY) -m benchmarks.run $(if $(FULL),--full,) $(if $(ONLY),--only $(ONLY),)

clean:
	rm -rf runs demo_out* demo_events.jsonl demo_multi .pytest_cache
