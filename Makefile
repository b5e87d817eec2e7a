# Two entry points on a fresh machine with Python 3.11+:
#   make demo   set up .venv and run the main job on the embedded digits data
#   make test   set up .venv and run the whole test suite (unit tests + notebooks)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export JAX_PLATFORMS ?= cpu

.PHONY: setup demo test bench notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lab train --dataset digits --model cnn --steps 2000 --seed 0

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/accuracy.py

notebooks: setup  ## re-execute the notebooks in place (commit the outputs)
	LAB_PROGRESS=off $(BIN)/python notebooks/execute.py notebooks/0*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
