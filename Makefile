# ml_platform: `make dev` to run it, `make test` to test it. Both set everything up from scratch.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# All local state lives under one directory; nothing is written elsewhere (and nothing phones home).
export ML_PLATFORM_HOME ?= $(CURDIR)/.ml_platform
export DAGSTER_HOME := $(ML_PLATFORM_HOME)/dagster
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export MPLCONFIGDIR := $(ML_PLATFORM_HOME)/cache/matplotlib
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_CACHE_DIR := 1

.PHONY: help install state dev demo test lint format bench mlflow-ui lock clean-state

help:
	@echo "make dev        set up, then start the Dagster UI and daemon on http://127.0.0.1:3000"
	@echo "make test       set up, then run the whole test suite"
	@echo "make demo       set up, then materialize the whole graph headless and print what it made"
	@echo "make bench      end-to-end pipeline benchmark on 1,000,000 transactions"
	@echo "make mlflow-ui  the MLflow UI for the local store on http://127.0.0.1:5000"
	@echo "make lint       ruff"
	@echo "make clean-state  delete the state directory ($(ML_PLATFORM_HOME))"

# The virtualenv, from the pinned lock file; redone when the lock or pyproject changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

state: install
	@$(BIN)/ml-platform init

dev: state
	exec $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

demo: state
	$(BIN)/ml-platform demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/pipeline.py

mlflow-ui: state
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(ML_PLATFORM_HOME)/mlflow/mlflow.db \
		--default-artifact-root file://$(ML_PLATFORM_HOME)/mlflow/artifacts --host 127.0.0.1 --port 5000

# Re-resolve the pinned versions (after changing pyproject.toml) in a throwaway virtualenv.
lock:
	rm -rf /tmp/ml_platform_lock && $(PYTHON) -m venv /tmp/ml_platform_lock
	/tmp/ml_platform_lock/bin/pip install --quiet ".[dev]"
	( echo "# Exact versions of every package, transitive ones too, as tested. Regenerate with \`make lock\`."; \
	  /tmp/ml_platform_lock/bin/pip freeze --exclude-editable | grep -v '^ml-platform' ) > requirements.lock

clean-state:
	rm -rf $(ML_PLATFORM_HOME)
