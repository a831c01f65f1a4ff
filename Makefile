# difflab: `make repro` runs the comparison, `make test` checks the code. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv on PATH, else the module of a pip-installed uv (pip may put its script off PATH)
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen
PY_DIRS := $(wildcard src tests pipeline bench)
EXPERIMENT ?=
OVERRIDES ?=
# Tracking stays on this machine unless the user says otherwise (WANDB_MODE=online).
export WANDB_MODE ?= offline
export WANDB_DIR ?= $(CURDIR)/outputs/wandb
export WANDB_CACHE_DIR ?= $(CURDIR)/outputs/wandb/cache
export WANDB_DATA_DIR ?= $(CURDIR)/outputs/wandb/data
export WANDB_CONFIG_DIR ?= $(CURDIR)/outputs/wandb/config
export WANDB_SILENT ?= true
# Offline test data (the MNIST test split) when ../shared is beside the checkout.
export DIFFLAB_MNIST_ROOT ?= $(if $(wildcard $(CURDIR)/../shared/data/mnist),$(CURDIR)/../shared/data/mnist,)

.PHONY: help setup test test-all test-reliability lint format clean params repro report fid-weights wandb-sync wandb-report bench spec-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

setup: .venv/.synced  ## install everything (uv, then the locked environment); quick when nothing changed

lint: setup  ## ruff check + format check
	$(RUN) ruff check $(PY_DIRS)
	$(RUN) ruff format --check $(PY_DIRS)

format: setup  ## apply ruff fixes and formatting
	$(RUN) ruff check --fix $(PY_DIRS)
	$(RUN) ruff format $(PY_DIRS)

spec-check: setup  ## names and outputs promised by ../shared/SPEC.md
	@if [ -f ../shared/tools/spec_check.py ]; then $(RUN) python ../shared/tools/spec_check.py; \
	else echo "spec-check: ../shared/tools/spec_check.py not found, skipped"; fi

test: lint spec-check  ## lint + the fast test tier (at most 10 minutes on 2 CPU cores)
	$(RUN) pytest -m "not slow" -q

test-all: lint spec-check  ## every test, slow end-to-end runs included
	$(RUN) pytest -q

# The slow tests that guard against lost work (CI runs them after `make test`): the smallest end-to-end
# repro, a second repro doing nothing, kill -9 mid-stage, resume of a killed training, the NaN guard,
# and two ranks writing what one process writes.
RELIABILITY := tests/test_pipeline.py tests/test_pretrained_pipeline.py tests/test_ranks.py \
	tests/test_module.py::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint \
	tests/test_sampling.py::test_torch_distributed_two_ranks_match_one_process
test-reliability: setup  ## the slow reliability subset: kill -9, resume, NaN guard, 2 ranks, smallest repro, a pretrained model end to end
	$(RUN) pytest -q $(RELIABILITY)

bench: setup  ## the benchmarks in bench/ (results go to BENCHMARKS.md by hand)
	$(RUN) python bench/solver_overhead.py

params: setup  ## compose conf/ into params.yaml (EXPERIMENT=mnist, or OVERRIDES="seed=1 sample.n_samples=500")
	$(RUN) python pipeline/compose.py $(COMPOSE_ARGS)

# `make params` then `dvc repro`, both under the warm-start server (pipeline/warm.py), which imports
# torch, Lightning and torch-fidelity once for every stage
# (WARM=0: every stage imports its libraries itself, as a plain `dvc repro` does)
WARM ?= 1
repro: setup  ## run the whole comparison with DVC (EXPERIMENT=mnist for the GPU experiment)
	$(RUN) $(if $(filter 1,$(WARM)),python pipeline/warm.py --) bash -c 'python pipeline/compose.py $(COMPOSE_ARGS) && dvc repro'

COMPOSE_ARGS = $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(OVERRIDES)

report: setup  ## rebuild results/plots and results/report.html from results/seeds.csv
	$(RUN) python pipeline/report.py --from-csv

fid-weights: setup  ## Inception weights for FID/KID on mnist/cifar10 (download, or rebuilt offline)
	$(RUN) python -m difflab.metrics.inception

wandb-sync: setup  ## upload the offline W&B runs (needs network and `wandb login`)
	$(RUN) python pipeline/wandb_tools.py sync

wandb-report: setup  ## publish a W&B Report of the comparison (needs WANDB_MODE=online and a key)
	$(RUN) python pipeline/wandb_tools.py report

clean:  ## remove caches and pipeline outputs (keeps .venv and the DVC cache)
	rm -rf .pytest_cache .ruff_cache outputs results data models references samples evals grids
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
