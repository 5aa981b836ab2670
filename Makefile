# drsf_kit: `make demo` runs the kit on the embedded data, `make test` runs the fast tests (a few minutes),
# `make test-all` adds the slow and real-browser tests (they need Debian's chromium: apt-get install chromium).
# Both create .venv when it is missing (and reuse it when present), then install the kit into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drsf_kit-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# papermill/jupyter find the kernel registered inside the venv
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter

.PHONY: demo test test-slow test-all gpu-check lab app board install clean-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e ".[test,app]"
	$(BIN)/python -m ipykernel install --sys-prefix --name drsf_kit --display-name "Python (drsf_kit)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/drsf demo

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -p no:cacheprovider --tier fast

# the slow and browser tiers only; a missing Chromium or playwright fails these tests, never skips them
test-slow: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -p no:cacheprovider --tier extra

test-all: test test-slow

# On a GPU machine, with its own python3 (no venv, no install; it needs no notebook package):
# every variant's step at the paper scale, real `drsf train` runs of every variant, the paper
# detector through the loader; writes benchmarks/results/gpu_check.json (docs/scaling.md)
gpu-check:
	PYTHONPATH=$(CURDIR) python3 benchmarks/gpu_check.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

app: $(STAMP)
	$(BIN)/drsf app $(if $(RUNS),--runs $(RUNS),)

board: $(STAMP)
	$(BIN)/tensorboard --logdir $(or $(RUNS),runs)

clean-data:
	rm -rf data/mini-weather data/synth runs
