# Two entry points, each doing all of its own set-up on a fresh machine (Python >= 3.11 and pip):
#   make train   -> virtual environment, install, train the quickstart config on the bundled sample
#   make test    -> virtual environment, install with test extras, lint, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py

.PHONY: train test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "bts_jax needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"

train: install
	$(BIN)/python train.py --config $(CONFIG) --workdir $(WORKDIR)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache
