# Two entry points on a fresh machine with Python 3.11+:
#   make demo   set up .venv and run the main job on the embedded digits data
#   make test   set up .venv and run the whole test suite (unit tests + notebooks)
# Runs use the accelerator when JAX sees one (pip install -e '.[cuda12]', see the README's
# "GPUs and TPUs"); the test suite (conftest.py) and `make notebooks` (notebooks/execute.py) pin
# the CPU, whose numbers the committed outputs and expected values reproduce bit for bit.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The headline study on digits: supervised vs semi-supervised (FlexMatch) vs transfer
# (SimCLR + fine-tuning, backbone at 0.1x) at 1, 2, 4 and 10 labels per class, 3 seeds
# per point; the MLP, 2,000 steps at 0.01. These settings were chosen on a validation
# split of the training data (benchmarks/demo_settings.py), not on the test split.
DEMO_GRID := -p setup supervised,semi_supervised,transfer -p labels_per_class 1,2,4,10 -p seed 0:3 \
	-p method flexmatch -p adaptation finetune_low_lr -p pretrain_kwargs '{"steps": 1000}' \
	-p model mlp -p steps 2000 -p learning_rate 0.01 -p eval_every 500
demo: setup
	$(BIN)/lab sweep notebooks/05_experiment.ipynb $(DEMO_GRID) --name demo --workers 2
	$(BIN)/lab report --sweep demo --out figures

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/conv_speed.py
	$(BIN)/python benchmarks/accuracy.py

notebooks: setup  ## re-execute the notebooks in place (commit the outputs)
	LAB_PROGRESS=off $(BIN)/python notebooks/execute.py notebooks/0*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
