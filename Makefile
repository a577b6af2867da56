# MLflow Project Store. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
# `mlflow run --env-manager local` starts the entry point with the `python` on PATH.
RUN_ENV := PATH="$(BIN):$$PATH"

# The tracking store of every target, one rule: TRACKING_URI= on the command line, else
# MLFLOW_TRACKING_URI from the environment, else the local store ./mlflow.db (the one MLflow
# uses by default from this folder). Every target that records or reads prints it.
LOCAL_STORE := sqlite:///$(CURDIR)/mlflow.db
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),$(LOCAL_STORE))
# What is printed of it: credentials masked by project_tools.redaction (MLflow-free, so the
# system Python runs it before .venv exists). Recipes read the URI from their environment,
# never from their command line, which make echoes.
SHOWN_STORE = $(shell PYTHONPATH=$(CURDIR)/example $(PYTHON) -c 'import sys; \
  from project_tools.redaction import redact; print(redact(sys.argv[1]))' '$(TRACKING_URI)')
SAY_STORE = @echo "Tracking store: $(SHOWN_STORE)"
run ui sweep run-docker run-k8s promote serve predict: export MLFLOW_TRACKING_URI := $(TRACKING_URI)
PROJECT ?= projects/mnist-conda
ENV_MANAGER ?= local
RUN_ARGS ?=
UI_PORT ?= 5000
PYTEST_ARGS ?=
# `make test`: the markers of pyproject.toml that the quick part leaves out.
QUICK_TESTS := not (docker or server or slow or uv or k8s or conda)
# `make benchmark`: modules of benchmarks/, in this order (BENCHMARKS=serving runs one).
BENCHMARKS ?= mnist_recipes ddp_throughput tracking_overhead serving startup docker_build \
  make_run tracking_load gpu_training suite
VARIANTS ?= conda
TEMPLATE ?= pytorch
TRIALS ?= 8
PARALLEL ?= 2

# Containers: the official python:3.11-slim, unless only the stand-in that `make base-image`
# builds from Debian packages (where Docker Hub is out of reach) is present.
STAND_IN_BASE := mlflow-store/python:3.11-bookworm
BASE_IMAGE ?= $(shell docker image inspect python:3.11-slim >/dev/null 2>&1 || \
  ! docker image inspect $(STAND_IN_BASE) >/dev/null 2>&1 && echo python:3.11-slim || \
  echo $(STAND_IN_BASE))
# Host network: the container reaches servers on the host. The mount: with the local store,
# MLflow 3 writes a logged model under the experiment's artifact root, which MLflow's Docker
# backend does not mount by itself (it mounts the run's artifact folder only). The user: the
# images run as a non-root user; with the local store the container writes as its owner.
DOCKER_RUN_ARGS ?= -A network=host -A v=$(CURDIR)/mlruns:$(CURDIR)/mlruns -A user=$(shell id -u):$(shell id -g)
# Kubernetes: the registry the image is pushed to, the kube context, the pod's tracking URI.
K8S_PROJECT ?= projects/mnist-k8s
REGISTRY ?= localhost:5050
KUBE_CONTEXT ?= $(shell kubectl config current-context 2>/dev/null)
KUBE_TRACKING_URI ?= $(TRACKING_URI)
run-k8s: export KUBE_MLFLOW_TRACKING_URI = $(KUBE_TRACKING_URI)
REGISTRY_PORT ?= 5050
STATE := $(CURDIR)/.run

.PHONY: help setup run ui test test-all lint benchmark screenshots clean sweep new-project validate store docker-check \
	docker-images run-docker run-k8s registry registry-stop base-image

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv with the pinned dependencies (no-op when up to date)

$(VENV)/.installed: requirements.txt pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "make setup: no python3 on PATH; install Python 3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
	  { echo "make setup: $(PYTHON) is older than Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || \
	  { echo "make setup: could not create $(VENV); on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.txt --group dev
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	@touch $@

run: setup ## Train projects/mnist-conda on the bundled data into the local store
	$(SAY_STORE)
	$(RUN_ENV) $(BIN)/mlflow run $(PROJECT) --env-manager $(ENV_MANAGER) $(RUN_ARGS)
	@echo "Open the UI on this store: make ui   (then http://127.0.0.1:$(UI_PORT))"

ui: setup ## Open the MLflow UI on the tracking store
	$(SAY_STORE)
	$(BIN)/mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" --port $(UI_PORT)

test: setup ## The quick part of the suite: no Docker, server, image push, uv build or long training
	$(RUN_ENV) $(BIN)/pytest -m "$(QUICK_TESTS)" -n auto $(PYTEST_ARGS)

test-all: setup ## The whole suite, as CI runs it (smoke-runs every project with mlflow run)
	$(RUN_ENV) $(BIN)/pytest --durations=30 $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

benchmark: setup ## Every benchmark (BENCHMARKS=...) into benchmarks/results.json, then the table
	@for name in $(BENCHMARKS); do \
	  echo "== make benchmark: $$name"; \
	  case $$name in mnist_recipes|ddp_throughput) module="captured $$name";; *) module=$$name;; esac; \
	  $(RUN_ENV) $(BIN)/python -m benchmarks.$$module || exit 1; \
	done
	@$(BIN)/python -m benchmarks.results

screenshots: setup ## Record real runs on a fresh tracking server and capture the UI into images/
	@$(RUN_ENV) $(BIN)/python -m ready_for_mlflow.screenshots $(CURDIR)/images

clean: ## Remove the local tracking store (mlflow.db, mlruns/)
	rm -rf mlflow.db mlruns

sweep: setup ## Optuna sweep of projects/mnist-conda: TRIALS trials, PARALLEL at a time; best -> MODEL (mnist)
	$(SAY_STORE)
	$(RUN_ENV) $(BIN)/mlflow run projects/mnist-sweep \
	  --env-manager $(ENV_MANAGER) -P trials=$(TRIALS) -P max_parallel=$(PARALLEL) \
	  -P registered_model_name=$(or $(MODEL),mnist) $(RUN_ARGS)

new-project: setup ## New project NAME=my-exp [VARIANTS="conda docker k8s"] [TEMPLATE=pytorch|sklearn]
	@$(BIN)/python -m scaffold.new_project "$(NAME)" --variants "$(VARIANTS)" \
	  --template "$(TEMPLATE)" --projects-dir $(CURDIR)/projects

validate: setup ## Check every project under projects/ (MLproject, env, Dockerfile, k8s, links, README)
	@$(BIN)/python -m scaffold.validate --projects-dir $(CURDIR)/projects

store: ## Print the tracking store that the targets use (TRACKING_URI rule above)
	@echo "Tracking store: $(SHOWN_STORE)"

docker-check:
	@docker info >/dev/null 2>&1 || { echo "make $(firstword $(MAKECMDGOALS)): no Docker daemon answers (docker info failed): start dockerd or Docker Desktop" >&2; exit 1; }

base-image: docker-check ## Build a python:3.11-slim stand-in from Debian packages (no Docker Hub)
	.ci/base-image.sh $(STAND_IN_BASE)

docker-images: docker-check ## Build the dependency image of every projects/*/Dockerfile
	@for dockerfile in projects/*/Dockerfile; do \
	  folder=$$(dirname $$dockerfile); \
	  image=$$(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' $$folder/MLproject | head -1); \
	  [ -n "$$image" ] || { echo "make docker-images: $$folder/MLproject names no docker_env image" >&2; exit 1; }; \
	  echo "docker build $$folder -> $$image (BASE_IMAGE=$(BASE_IMAGE))"; \
	  docker build --quiet --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $$image $$folder \
	    >/dev/null || exit 1; \
	done

run-docker: setup docker-check ## Run mnist-docker and elasticnet-docker with mlflow run --build-image
	$(SAY_STORE)
	@for image in mlflow-store/mnist-deps:1 mlflow-store/elasticnet-deps:1; do \
	  docker image inspect $$image >/dev/null 2>&1 || { echo "make run-docker: image $$image is missing: run make docker-images" >&2; exit 1; }; done
	$(RUN_ENV) $(BIN)/mlflow run --build-image \
	  $(DOCKER_RUN_ARGS) projects/mnist-docker $(RUN_ARGS)
	$(RUN_ENV) $(BIN)/mlflow run --build-image \
	  $(DOCKER_RUN_ARGS) projects/elasticnet-docker -P alpha=0.001

run-k8s: setup docker-check ## Run K8S_PROJECT (mnist-k8s) as a Kubernetes Job (REGISTRY, KUBE_CONTEXT, TRACKING_URI)
	@[ -f $(K8S_PROJECT)/kubernetes_config.json ] || { echo "make run-k8s: $(K8S_PROJECT) has no kubernetes_config.json: set K8S_PROJECT=projects/<name>-k8s" >&2; exit 1; }
	@[ -n "$(KUBE_CONTEXT)" ] && kubectl config get-contexts "$(KUBE_CONTEXT)" >/dev/null 2>&1 || { echo "make run-k8s: no kube context '$(KUBE_CONTEXT)': set KUBE_CONTEXT= to one of 'kubectl config get-contexts'" >&2; exit 1; }
	@case "$$MLFLOW_TRACKING_URI" in http://*|https://*) ;; *) echo "make run-k8s: the pod needs a tracking server, not $(SHOWN_STORE): set TRACKING_URI=http(s)://..." >&2; exit 1;; esac
	@registry="$(REGISTRY)"; host=$${registry%%/*}; port=443; case $$host in *:*) port=$${host##*:}; host=$${host%%:*};; esac; \
	  timeout 5 bash -c "</dev/tcp/$$host/$$port" 2>/dev/null || { echo "make run-k8s: registry $(REGISTRY) does not answer on $$host:$$port: start one with make registry, or set REGISTRY=" >&2; exit 1; }
	@image=$$(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' $(K8S_PROJECT)/MLproject | head -1); \
	  docker image inspect $$image >/dev/null 2>&1 || { echo "make run-k8s: image $$image is missing: run make docker-images" >&2; exit 1; }
	$(SAY_STORE)
	@mkdir -p $(STATE) && $(BIN)/python -c 'import json; \
	  config = json.load(open("$(K8S_PROJECT)/kubernetes_config.json")); \
	  config.update({"kube-context": "$(KUBE_CONTEXT)", "repository-uri": "$(REGISTRY)/$(notdir $(K8S_PROJECT))"}); \
	  json.dump(config, open("$(STATE)/kubernetes_config.json", "w"), indent=2)'
	$(RUN_ENV) $(BIN)/mlflow run --backend kubernetes --backend-config $(STATE)/kubernetes_config.json \
	  --build-image $(K8S_PROJECT) $(RUN_ARGS)

registry: setup ## Start a local image registry on 127.0.0.1:REGISTRY_PORT (default 5050)
	@$(BIN)/python -m ready_for_mlflow.servers registry start --port $(REGISTRY_PORT) --state $(STATE)

registry-stop: ## Stop the registry that make registry started
	@$(BIN)/python -m ready_for_mlflow.servers registry stop --state $(STATE)
include ready_for_mlflow/server.mk
