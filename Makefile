# `make demo` and `make test` set everything up from nothing on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, so that `pip install -e .` finds it satisfied and pulls no other build.
# On a CUDA machine: make setup TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean

# The native core (csrc/), rebuilt when a source changes; the stamp holds the sources' digest.
NATIVE := edbc/native/_build/sources.sha256

setup: $(VENV)/.installed $(NATIVE)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(NATIVE): $(VENV)/.installed $(wildcard csrc/*.cpp csrc/*.h) edbc/native/__init__.py edbc/native/build.py
	$(BIN)/python -m edbc.native.build

demo: setup
	$(BIN)/edbc run --check

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/edbc bench
	$(BIN)/edbc bench --train

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis edbc/native/_build
