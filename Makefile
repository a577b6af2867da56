# MLflow Project Store. `make help` lists the targets.
# Recipes hand make variables to their commands as data: through the environment (`export`),
# read as "$$NAME", never pasted into shell or Python source. The argument lists (RUN_ARGS,
# DOCKER_RUN_ARGS, PYTEST_ARGS, BENCHMARKS) are read unquoted, $$NAME, to split on whitespace
# into words; the shell runs with noglob (-f) so that a word is never a file pattern either.
# A quote, $$(...), backtick, ; or newline in a value stays a character of an argument. (So
# recipes use no file patterns such as *.py: the Python tools list files.)
SHELL := /bin/bash
.SHELLFLAGS := -f -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= $(CURDIR)/.venv
# VENV is the one value pasted into recipes (the tools' path, in every recipe, and PATH's first
# folder) and it names a make target ($(VENV)/.installed), so a value that the shell, PATH or
# make would read as more than a path is refused here, before any recipe runs: whitespace, a
# quote or shell syntax, PATH's separator `:`, make's `%` and file patterns.
UNSAFE_CHARACTERS := ' " ` \ $$ ; & | < > ( ) { } : % * ? [
VENV_PROBLEMS := $(if $(VENV),,empty) $(filter-out 1,$(words x$(VENV)x)) \
  $(foreach c,$(UNSAFE_CHARACTERS),$(findstring $c,$(VENV)))
define NEWLINE


endef
ifneq ($(strip $(VENV_PROBLEMS)),)
$(error VENV '$(subst $(NEWLINE),\n,$(VENV))': expected a folder path without whitespace \
  or any of $(UNSAFE_CHARACTERS))
endif
BIN := $(VENV)/bin
# `mlflow run --env-manager local` starts the entry point with the `python` on PATH.
RUN_ENV := PATH="$(BIN):$$PATH"
TOOL := $(RUN_ENV) $(BIN)/python -m mlflow_project_store

# The tracking store of every target, one rule: TRACKING_URI= on the command line, else
# MLFLOW_TRACKING_URI from the environment, else the local store ./mlflow.db (the one MLflow
# uses by default from this folder). Every target that records or reads prints it first
# (`store`, its password masked) and, for a server, checks in seconds that it answers.
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow.db)
run ui sweep run-docker run-k8s store reproduce promote serve predict: export MLFLOW_TRACKING_URI := $(TRACKING_URI)
STORE = @$(TOOL).store --prog "make $@"
PROJECT ?= projects/mnist-conda
ENV_MANAGER ?= local
RUN_ARGS ?=
UI_PORT ?= 5000
PYTEST_ARGS ?=
# `make test`: the markers of pyproject.toml that the quick part leaves out.
QUICK_TESTS := not (docker or server or slow or uv or k8s or conda)
# `make benchmark`: modules of benchmarks/, in this order (BENCHMARKS=serving runs one).
BENCHMARKS ?= mnist_recipes ddp_throughput tracking_overhead serving serving_image startup \
  docker_build make_run tracking_load gpu_training suite
VARIANTS ?= conda
TEMPLATE ?= pytorch
TRIALS ?= 8
PARALLEL ?= 2
DEST ?=
RUN ?=

# Containers. BASE_IMAGE: the official python:3.11-slim, or where only the stand-in that
# `make base-image` builds from Debian packages is present (no Docker Hub), that one.
BASE_IMAGE ?=
DOCKER_PROJECT ?= projects/mnist-docker
# Host network: the container reaches servers on the host. The mount: with the local store,
# MLflow 3 writes a logged model under the experiment's artifact root, which MLflow's Docker
# backend does not mount by itself (it mounts the run's artifact folder only). The user: the
# images run as a non-root user; with the local store the container writes as its owner.
DOCKER_RUN_ARGS ?= -A network=host -A v=$(CURDIR)/mlruns:$(CURDIR)/mlruns -A user=$(shell id -u):$(shell id -g)
# Kubernetes: the project and entry point, the registry the image is pushed to, the kube
# context, and the tracking URI the pod uses (when it reaches the server by another address).
K8S_PROJECT ?= projects/mnist-docker
ENTRY_POINT ?= main
REGISTRY ?= localhost:5050
KUBE_CONTEXT ?=
KUBE_TRACKING_URI ?=
REGISTRY_PORT ?= 5050
STATE := $(CURDIR)/.run
# The projects the tools work on: this folder's (the tools may be installed from another clone).
PROJECTS_DIR := $(CURDIR)/projects
run-k8s: export KUBE_MLFLOW_TRACKING_URI := $(or $(KUBE_TRACKING_URI),$(TRACKING_URI))
export PROJECT DEST RUN DOCKER_RUN_ARGS ENV_MANAGER NAME VARIANTS TEMPLATE TRIALS PARALLEL MODEL BASE_IMAGE \
  DOCKER_PROJECT K8S_PROJECT ENTRY_POINT REGISTRY KUBE_CONTEXT REGISTRY_PORT STATE PROJECTS_DIR \
  RUN_ARGS UI_PORT PYTEST_ARGS QUICK_TESTS BENCHMARKS

.PHONY: help setup run ui test test-all lint benchmark screenshots clean sweep new-project \
	validate export reproduce store docker-images run-docker run-k8s registry registry-stop base-image

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv with the pinned dependencies (no-op when up to date)

$(VENV)/.installed: export PYTHON := $(PYTHON)
$(VENV)/.installed: requirements.txt pyproject.toml
	@[ -n "$$PYTHON" ] || { echo "make setup: no python3 on PATH; install Python 3.11" >&2; exit 1; }
	@command -v "$$PYTHON" >/dev/null || \
	  { printf 'make setup: PYTHON=%q is not a command; set PYTHON=/path/to/python3.11\n' "$$PYTHON" >&2; exit 1; }
	@"$$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
	  { echo "make setup: $$PYTHON is older than Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	@[ -x $(BIN)/python ] || "$$PYTHON" -m venv $(VENV) || \
	  { echo "make setup: could not create $(VENV); on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.txt --group dev
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	@touch $@

run: setup ## Train PROJECT (projects/mnist-conda) on the bundled data into the tracking store
	$(STORE) --check
	$(RUN_ENV) $(BIN)/mlflow run "$$PROJECT" --env-manager "$$ENV_MANAGER" $$RUN_ARGS
	@echo "Open the UI on this store: make ui   (then http://127.0.0.1:$$UI_PORT)"

ui: setup ## Open the MLflow UI on the tracking store
	@[[ $$UI_PORT =~ ^[0-9]{1,5}$$ ]] && (( 10#$$UI_PORT >= 1 && 10#$$UI_PORT <= 65535 )) || \
	  { printf 'make ui: bad UI_PORT %q: expected a port number, 1 to 65535\n' "$$UI_PORT" >&2; exit 2; }
	$(STORE)
	$(BIN)/mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" --port "$$UI_PORT"

test: setup ## The quick part of the suite: no Docker, server, image push, uv build or long training
	$(RUN_ENV) $(BIN)/pytest -m "$$QUICK_TESTS" -n auto $$PYTEST_ARGS

test-all: setup ## The whole suite, as CI runs it (runs every project, exported, with mlflow run)
	$(RUN_ENV) $(BIN)/pytest --durations=30 $$PYTEST_ARGS

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmarks time the mnist code as MLflow runs it: from its project folder.
benchmark: export PYTHONPATH := $(CURDIR)/projects/mnist-conda
benchmark: setup ## Every benchmark (BENCHMARKS=...) into benchmarks/results.json, then the table
	@for name in $$BENCHMARKS; do \
	  echo "== make benchmark: $$name"; \
	  case $$name in mnist_recipes|ddp_throughput) module="captured $$name";; *) module=$$name;; esac; \
	  $(RUN_ENV) $(BIN)/python -m benchmarks.$$module || exit 1; \
	done
	@$(BIN)/python -m benchmarks.results

screenshots: setup ## Record real runs on a fresh tracking server and capture the UI into images/
	@$(TOOL).ready_for_mlflow.screenshots "$$PWD/images"

clean: ## Remove the local tracking store (mlflow.db, mlruns/)
	rm -rf mlflow.db mlruns

sweep: setup ## Optuna sweep of projects/mnist-conda: TRIALS trials, PARALLEL at a time; best -> MODEL (mnist)
	$(STORE) --check
	$(RUN_ENV) $(BIN)/mlflow run projects/mnist-sweep --env-manager "$$ENV_MANAGER" \
	  -P "trials=$$TRIALS" -P "max_parallel=$$PARALLEL" \
	  -P "registered_model_name=$${MODEL:-mnist}" $$RUN_ARGS

new-project: setup ## New project NAME=my-exp [VARIANTS="conda docker k8s"] [TEMPLATE=pytorch|sklearn]
	@$(TOOL).new_project

validate: setup ## Check every project under projects/ (MLproject, env, Dockerfile, k8s, links, README)
	@$(TOOL).validate

export: setup ## Copy PROJECT into DEST as a folder that runs on its own (links become copies)
	@$(TOOL).export

reproduce: setup ## Run RUN (a run id, or models:/name@alias) again from its commit; compare the metrics
	$(STORE) --check
	@$(TOOL).reproduce

store: setup ## Print the tracking store that the targets use (TRACKING_URI rule above)
	$(STORE)

base-image: ## Build a python:3.11-slim stand-in from Debian packages (no Docker Hub)
	.ci/base-image.sh mlflow-store/python:3.11-bookworm

docker-images: setup ## Build the dependency image of every projects/*/Dockerfile
	@$(TOOL).docker_images

run-docker: setup ## Run DOCKER_PROJECT (mnist-docker) in Docker: mlflow run --backend store-docker
	$(STORE) --check
	$(RUN_ENV) $(BIN)/mlflow run --backend store-docker --build-image $$DOCKER_RUN_ARGS \
	  "$$DOCKER_PROJECT" $$RUN_ARGS

run-k8s: setup ## Run K8S_PROJECT's ENTRY_POINT as a Kubernetes Job (REGISTRY, KUBE_CONTEXT, TRACKING_URI)
	@$(TOOL).kubernetes
	$(STORE) --check
	$(RUN_ENV) $(BIN)/mlflow run --backend store-kubernetes --build-image \
	  --backend-config "$$STATE/kubernetes_config.json" -e "$$ENTRY_POINT" "$$K8S_PROJECT" \
	  $$RUN_ARGS

registry: setup ## Start a local image registry on 127.0.0.1:REGISTRY_PORT (default 5050)
	@$(TOOL).ready_for_mlflow.servers registry start --port "$$REGISTRY_PORT" --state "$$STATE"

registry-stop: setup ## Stop the registry that make registry started
	@$(TOOL).ready_for_mlflow.servers registry stop --state "$$STATE"
include ready_for_mlflow/server.mk
