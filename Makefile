# Two commands do all set-up on a fresh machine:
#   make demo   -- installs into .venv, then trains the copy task with DNI on the CPU (minutes)
#   make test   -- installs into .venv, then runs the test suite
#
# TORCH_SPEC picks the PyTorch build. The default pins the CPU build that these machines
# carry locally. On a GPU machine use PyPI's standard (CUDA) build:  make demo TORCH_SPEC=torch
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# One intra-op thread: with 2 threads on a 2-core machine where another job held a core,
# 250 steps of the demo recipe (copy_dni) took 176 s against 7.5 s with 1 (idle: 7.5 vs
# 8.1 s). Raise it on a machine of your own: make demo OMP_NUM_THREADS=8
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
BIN := $(VENV)/bin

.PHONY: install demo test lint clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/dnirnn fit --config recipes/copy_dni.yaml

# The suite runs on every core (pytest-xdist), a test file to a worker: on the 2-core CI
# machine, 2 workers of one thread each. TEST_JOBS=0 runs it in this process.
TEST_JOBS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile tests

lint: install
	$(BIN)/ruff check setup.py dnirnn tests scripts

clean:
	rm -rf $(VENV) lightning_logs wandb runs
