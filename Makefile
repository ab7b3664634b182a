# streamscore: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install prometheus demo test test-unit test-integration bench bench-feedback lint typecheck cluster-up cluster-down cluster-reset cluster-status clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot,xgboost,lightgbm,mlflow]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install streamscore with its dev tools
	$(VENV)/bin/streamscore cluster install

prometheus: ## Install Debian's prometheus + promtool if missing (the rule tests need them)
	bash scripts/install-prometheus.sh

demo: install ## Run the main job on the local cluster (starts it if needed)
	$(VENV)/bin/streamscore demo

test: install prometheus ## Run the whole suite: unit tests, then integration tests on real servers
	$(PY) -m pytest tests/unit tests/integration

test-unit: $(STAMP) prometheus ## Unit tests only (no broker)
	$(PY) -m pytest tests/unit

test-integration: install ## Integration tests only (real Kafka, registry and S3 API server)
	$(PY) -m pytest tests/integration

bench: install ## Throughput / latency / memory benchmark on the local cluster
	$(PY) -m benchmarks.run

bench-feedback: install ## Labels joined per second by 1 and 2 feedback workers
	$(PY) -m benchmarks.feedback

lint: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check streamscore tests benchmarks
	$(VENV)/bin/ruff format --check streamscore tests benchmarks
	$(VENV)/bin/mypy

typecheck: $(STAMP) ## mypy only
	$(VENV)/bin/mypy

cluster-up: install ## Start the local Kafka (KRaft), Apicurio Registry and S3Proxy on loopback
	$(VENV)/bin/streamscore cluster up

cluster-down: $(STAMP) ## Stop the local cluster (its data stays)
	$(VENV)/bin/streamscore cluster down

cluster-reset: $(STAMP) ## Stop the local cluster and wipe its broker data and registry store (S3Proxy buckets kept)
	$(VENV)/bin/streamscore cluster reset

cluster-status: $(STAMP) ## Show whether the local cluster is running
	$(VENV)/bin/streamscore cluster status

clean: ## Remove the virtualenv and build artefacts (not the download cache)
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
