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

.PHONY: help install state dev demo test test-fast test-integration lint format bench bench-scale mlflow-ui lock clean-state

help:
	@echo "make dev        set up, then start the Dagster UI and daemon on http://127.0.0.1:3000; an empty state"
	@echo "                directory first gets a small platform to look at (champion, checks, monitoring)"
	@echo "make test       set up, then run the whole test suite (two workers, random order)"
	@echo "make test-fast  the core's unit tests only, for the inner loop (under a minute)"
	@echo "make test-integration  only the production-profile tests on PostgreSQL and Redis (both must be up)"
	@echo "make demo       set up, materialize the whole graph headless, then close the loop: drifted traffic,"
	@echo "                retrain + deploy by the sensors, bad labels, rollback (DEMO_ARGS=--no-loop: the graph only)"
	@echo "make bench      end-to-end pipeline benchmark on 1,000,000 transactions"
	@echo "make bench-scale  a day's feature refresh with 30 and with 120 days of history (BENCH_ARGS=--quick)"
	@echo "make mlflow-ui  the MLflow UI for the local store on http://127.0.0.1:5000"
	@echo "make lint       ruff, then the layers' import contracts (lint-imports, pyproject.toml)"
	@echo "make clean-state  delete the state directory ($(ML_PLATFORM_HOME))"
	@echo "make validate   render every deploy/k8s overlay and validate it against the Kubernetes schemas; load the Dagster definitions"
	@echo "make prometheus-rules  write the Prometheus alert rules (deploy/prometheus, deploy/k8s/components/prometheus)"
	@echo "make images     docker build the user-code and model-server images (deploy/docker)"
	@echo "make smoke-k8s K8S_ENV=staging  smoke-test the model server deployed there (port-forward, /health, one /predict)"

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

# An empty state directory first gets the first look (`ml-platform bootstrap`: the demo's graph on small data,
# a champion served, a day of traffic monitored, the server stopped; well under a minute); any other is
# opened as it is.
dev: state
	$(BIN)/ml-platform bootstrap
	exec $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# The graph, then the closed loop with the timings of each leg (`ml-platform demo --help` for the knobs).
demo: state
	$(BIN)/ml-platform demo $(DEMO_ARGS)

# Two workers (pytest-xdist); the tests of the one whole-graph world carry xdist_group("graph") and run on one
# worker, those of the production profile's PostgreSQL databases xdist_group("postgres"). The order is new each
# run (pytest-randomly prints its seed: `-p randomly --randomly-seed=N` replays it).
test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The inner loop: the core's unit tests, in one process (well under a minute).
test-fast: install
	$(BIN)/python -m pytest tests/unit

# The production profile on real PostgreSQL and Redis (up on loopback; .ci/run starts them). `make test` runs these too.
test-integration: install
	$(BIN)/python -m pytest -m integration tests/integration

# ruff, then the layers' import contracts in pyproject.toml (uncached: it takes half a second, and a cache
# would be one more folder to keep out of git and the images).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/pipeline.py

# One day's feature refresh with 30 and with 120 days of history stored (BENCH_ARGS=--quick: a couple of minutes).
bench-scale: install
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

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

# ---- deploy/: images, manifest validation, smoke tests of a deployed server (what CI/CD calls) ----------
.PHONY: images validate validate-helm smoke smoke-k8s

ML_PLATFORM_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The Dagster Helm chart is versioned with the dagster package: the chart of the locked version.
DAGSTER_CHART_VERSION := $(shell sed -n 's/^dagster==//p' requirements.lock)
IMAGE_PREFIX ?= ml-platform
IMAGE_TAG ?= $(ML_PLATFORM_VERSION)
K8S_TREES := base overlays/staging overlays/prod
K8S_SCHEMA_VERSIONS := 1.30.0 1.32.0
K8S_ENV ?= staging
SMOKE_URL ?= http://127.0.0.1:18080
SMOKE_ROW := {"features": [120.0, 13.5, 1, 3, 8, 80.0, 640.0, 2.5, 1.5]}

# Both images from the same lock file `make install` uses (needs a Docker engine; tests only parse them).
images:
	docker build -f deploy/docker/Dockerfile.user-code -t $(IMAGE_PREFIX)/user-code:$(IMAGE_TAG) .
	docker build -f deploy/docker/Dockerfile.model-server -t $(IMAGE_PREFIX)/model-server:$(IMAGE_TAG) .

# Every kustomize tree rendered by kubectl and validated (strict: unknown fields fail) against the
# Kubernetes schemas, offline; then the code location loaded the way the webserver loads it.
validate: state
	@set -euo pipefail; for tree in $(K8S_TREES); do \
		for version in $(K8S_SCHEMA_VERSIONS); do \
			kubectl kustomize deploy/k8s/$$tree | $(BIN)/kubernetes-validate --strict --quiet -k $$version -; \
		done; \
		echo "deploy/k8s/$$tree: valid for Kubernetes $(K8S_SCHEMA_VERSIONS)"; \
	done
	$(BIN)/dagster definitions validate -w workspace.yaml

# The alert rules for Prometheus, generated from the code's rules (ml_platform/monitoring/alerts.py): a plain
# rules file and the PrometheusRule of the optional kustomize component (a test keeps both current).
.PHONY: prometheus-rules
prometheus-rules: install
	$(BIN)/python -m ml_platform.monitoring.prometheus --rules-file deploy/prometheus/rules.yml \
		--prometheus-rule deploy/k8s/components/prometheus/prometheusrule.yaml

# deploy/helm/values.yaml rendered by the real chart (Helm checks the values against the chart's
# values.schema.json), every object validated. Needs helm and the network (CI), not run by the tests.
validate-helm: install
	helm repo add dagster https://dagster-io.github.io/helm --force-update
	@set -euo pipefail; helm template dagster dagster/dagster --version $(DAGSTER_CHART_VERSION) --namespace dagster \
		-f deploy/helm/values.yaml | $(BIN)/kubernetes-validate --quiet -k 1.32.0 -

# A deployed model server answers: /health is 200 and one /predict over HTTP returns a model version.
# The bearer token, when the server requires one, is read from ML_PLATFORM_SERVING_TOKEN (never echoed).
SMOKE_SCRIPT = for _ in $$(seq 1 30); do curl -sf -o /dev/null "$$url/health" && break; sleep 2; done; \
	curl -sSf "$$url/health"; echo; \
	auth=(); if [ -n "$${ML_PLATFORM_SERVING_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $$ML_PLATFORM_SERVING_TOKEN"); fi; \
	answer=$$(curl -sSf "$${auth[@]}" -H 'Content-Type: application/json' -d '$(SMOKE_ROW)' "$$url/predict"); \
	echo "$$answer"; \
	echo "$$answer" | grep -q '"model_version"' || { echo "smoke: /predict answered without a model_version" >&2; exit 1; }

smoke:
	@set -euo pipefail; url=$(SMOKE_URL); $(SMOKE_SCRIPT)

# The same, against the Service of the overlay K8S_ENV deployed by `ml-platform deploy --env $(K8S_ENV)`,
# through a port-forward (the Service is ClusterIP).
smoke-k8s:
	@set -euo pipefail; \
	kubectl -n ml-platform-$(K8S_ENV) port-forward service/fraud-detector 18080:80 >/dev/null & forward=$$!; \
	trap 'kill $$forward 2>/dev/null || true' EXIT; \
	url=http://127.0.0.1:18080; $(SMOKE_SCRIPT)
