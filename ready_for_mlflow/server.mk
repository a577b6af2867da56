# Tracking server, Model Registry and serving targets; included by the main Makefile.
# See ready_for_mlflow/README.md.

SERVER_STATE ?= $(CURDIR)/ready_for_mlflow/.server
SERVER_PORT ?= 5001
S3_PORT ?= 9100
BACKEND_STORE_URI ?= sqlite:///$(SERVER_STATE)/mlflow.db
ARTIFACTS_DESTINATION ?= s3://mlflow/artifacts
ENV_FILE ?= $(CURDIR)/.env
SERVE_PORT ?= 5003
MODEL ?=
VERSION ?=
INPUT ?=
# make serve ALLOW_PICKLE=1: serve pickled models too (loading one runs its author's code).
ALLOW_PICKLE ?=

# The settings of ready_for_mlflow/servers.py and the model commands, as their environment.
export SERVER_STATE SERVER_PORT S3_PORT BACKEND_STORE_URI ARTIFACTS_DESTINATION ENV_FILE \
  SERVE_PORT MODEL VERSION INPUT ALLOW_PICKLE

.PHONY: server server-stop promote serve predict

server: setup ## Start a local tracking server (SQL store, artifacts proxied to S3)
	@$(TOOL).ready_for_mlflow.servers start

server-stop: setup ## Stop what `make server` started
	@$(TOOL).ready_for_mlflow.servers stop

promote: setup ## Evaluate MODEL VERSION on held-out data; move alias champion to it only if it passes its gate
	@[ -n "$$MODEL" ] && [ -n "$$VERSION" ] || \
	  { echo "make promote: set MODEL=<registered model name> VERSION=<version>" >&2; exit 2; }
	$(STORE) --check
	@$(TOOL).ready_for_mlflow.promote "$$MODEL" "$$VERSION"

serve: setup ## Serve MODEL (e.g. models:/mnist@champion) over REST on SERVE_PORT; ALLOW_PICKLE=1 serves pickled models too (their code runs)
	@[ -n "$$MODEL" ] || \
	  { echo "make serve: set MODEL=<model URI>, e.g. MODEL=models:/mnist@champion" >&2; exit 2; }
	$(STORE) --check
	$(RUN_ENV) MLFLOW_DEFAULT_PREDICTION_DEVICE=$${MLFLOW_DEFAULT_PREDICTION_DEVICE:-cpu} \
	  $(BIN)/python -m mlflow_project_store.predict.serve "$$MODEL" --host 127.0.0.1 \
	  --port "$$SERVE_PORT" --prog "make serve" --allow-hint ALLOW_PICKLE=1 \
	  $$( [ "$$ALLOW_PICKLE" = 1 ] && echo --allow-pickle )

predict: setup ## Predict INPUT (images folder, IDX file or CSV) with MODEL
	@[ -n "$$MODEL" ] && [ -n "$$INPUT" ] || \
	  { echo "make predict: set MODEL=<model URI> INPUT=<folder, image, IDX or CSV>" >&2; exit 2; }
	$(STORE) --check
	@$(TOOL).predict "$$MODEL" "$$INPUT"

# Serving a registered model on a cluster: its image, its Deployment, and the rollout that
# follows its alias (ready_for_mlflow/README.md, "Model Registry"). WEBHOOK_SECRET comes from
# the environment only.
KUBE_NAMESPACE ?= mlflow
DRY_RUN ?=
MANIFEST ?= $(STATE)/model-serving.yaml
ROLLOUT_TIMEOUT ?= 600
RECEIVER_HOST ?= 127.0.0.1
RECEIVER_PORT ?= 5055
SERVING_DEPS_IMAGE ?=
export KUBE_NAMESPACE DRY_RUN MANIFEST ROLLOUT_TIMEOUT RECEIVER_HOST RECEIVER_PORT SERVING_DEPS_IMAGE
serving-image deploy-model rollout-receiver: export MLFLOW_TRACKING_URI := $(TRACKING_URI)

.PHONY: serving-image deploy-model rollout-receiver

serving-image: setup ## Build the image serving MODEL (models:/NAME@ALIAS: its version now), push it to REGISTRY, print its digest
	$(STORE) --check
	@$(TOOL).serving_image

deploy-model: setup ## Run MODEL's serving image on KUBE_CONTEXT in KUBE_NAMESPACE (mlflow); DRY_RUN=1 writes MANIFEST only
	$(STORE) --check
	@$(TOOL).rollout

rollout-receiver: setup ## Receive MLflow webhooks on RECEIVER_PORT: deploy MODEL (models:/NAME@champion) whenever the alias moves
	$(STORE) --check
	@$(TOOL).rollout_receiver

# The tracking server of ready_for_mlflow/deploy/ on KUBE_CONTEXT in KUBE_NAMESPACE (mlflow):
# SECRETS is the filled copy of secrets.example.yaml; DRY_RUN=1 renders and validates only.
deploy-server: export SECRETS ?= $(CURDIR)/ready_for_mlflow/deploy/secrets.yaml
deploy-server: export SERVER_MANIFESTS := $(CURDIR)/ready_for_mlflow/deploy/tracking-server.yaml
.PHONY: deploy-server
deploy-server: setup ## Deploy the tracking server (ready_for_mlflow/deploy/) to KUBE_CONTEXT with SECRETS; DRY_RUN=1 validates only
	@$(TOOL).deploy
