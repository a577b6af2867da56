# MLflow Project Store. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# `mlflow run --env-manager local` starts the entry point with the `python` on PATH.
RUN_ENV := PATH="$(BIN):$$PATH"

# Embedded local tracking store: the same one MLflow uses by default from this folder.
TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
PROJECT ?= projects/mnist-conda
ENV_MANAGER ?= local
RUN_ARGS ?=
UI_PORT ?= 5000
PYTEST_ARGS ?=

.PHONY: help setup run ui test lint benchmark clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv with the pinned dependencies (no-op when up to date)

$(VENV)/.installed: requirements.txt pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "make setup: no python3 on PATH; install Python 3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
	  { echo "make setup: $(PYTHON) is older than Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || \
	  { echo "make setup: could not create $(VENV); on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.txt --group dev
	@touch $@

run: setup ## Train projects/mnist-conda on the bundled data into the local store
	$(RUN_ENV) MLFLOW_TRACKING_URI=$(TRACKING_URI) \
	  $(BIN)/mlflow run $(PROJECT) --env-manager $(ENV_MANAGER) $(RUN_ARGS)
	@echo "Open the UI on this store: make ui   (then http://127.0.0.1:$(UI_PORT))"

ui: setup ## Open the MLflow UI on the local store
	$(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) --port $(UI_PORT)

test: setup ## Run the test suite (smoke-runs every project with mlflow run)
	$(RUN_ENV) $(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

benchmark: setup ## Time the MNIST recipe against the pytorch/examples reference
	$(BIN)/python benchmarks/mnist_recipes.py

clean: ## Remove the local tracking store (mlflow.db, mlruns/)
	rm -rf mlflow.db mlruns
