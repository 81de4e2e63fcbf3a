# Two entry points for a fresh machine:
#   make demo   set up a virtual environment and generate a 2048x2048 slide with the embedded demo models
#   make test   set up a virtual environment with the GUI and test extras and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := .ci/constraints.txt
TORCH ?= torch==2.13.0
SIZE ?= 2048x2048
OUT ?= demo.zarr

.PHONY: demo test setup setup-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[slides]"
	touch $@

$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[all]"
	# torch-fidelity's Inception-v3 (used by `diffinfinite evaluate`) works without torchvision, but its
	# metadata requires torchvision, whose PyPI build does not import beside this torch: install it alone.
	$(PIP) install --quiet --no-deps "torch-fidelity==0.4.0"
	touch $@ $(VENV)/.core

setup: $(VENV)/.core
setup-test: $(VENV)/.all

demo: setup
	$(BIN)/diffinfinite generate --out $(OUT) --size $(SIZE) --overwrite

test: setup-test
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/run_tests.sh

bench: setup
	$(BIN)/diffinfinite bench --sizes 1024,4096

clean:
	rm -rf $(VENV) build *.egg-info demo.zarr
