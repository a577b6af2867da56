"""Register a logged model as the ``candidate`` version of a registered model (torch-free).

Every project registers through :func:`register_candidate`, so every version carries the same
tags: its metrics, plus ``ranking_metric`` and ``ranking_order`` that say which metric ranks
versions and which way. ``make promote`` reads those tags, so it needs no flags per project.
"""

from __future__ import annotations

import sys

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CANDIDATE = "candidate"
CHAMPION = "champion"
RANKING_METRIC_TAG = "ranking_metric"
RANKING_ORDER_TAG = "ranking_order"
HIGHER, LOWER = "higher_is_better", "lower_is_better"


class RegistryError(Exception):
    """Registering failed; the message says where the logged model is and how to retry."""


def register_candidate(
    model_uri: str,
    name: str,
    metrics: dict[str, float],
    ranking_metric: str,
    higher_is_better: bool,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` aliased ``candidate``; return it.

    The version is tagged with ``metrics`` and with the metric that ranks it, which must be
    one of ``metrics``.
    """
    if ranking_metric not in metrics:
        raise ValueError(f"ranking metric {ranking_metric!r} is not among {sorted(metrics)}")
    try:
        version = mlflow.register_model(model_uri, name).version
        client = MlflowClient()
        client.set_registered_model_alias(name, CANDIDATE, version)
        tags = {key: f"{value:.6g}" for key, value in metrics.items()}
        tags[RANKING_METRIC_TAG] = ranking_metric
        tags[RANKING_ORDER_TAG] = HIGHER if higher_is_better else LOWER
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    # Not only MlflowException: a broken registry database raises SQLAlchemy's errors as they
    # are. Whatever failed, the model is logged, and the message says where.
    except Exception as exc:
        reason = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise RegistryError(
            f"the model is logged at {model_uri} but registering it failed "
            f"({(reason.strip() or type(exc).__name__).splitlines()[0]}); retry in Python with "
            f"mlflow.register_model({model_uri!r}, <name>)"
        ) from exc
    print(f"Registered {name!r} version {version} with alias {CANDIDATE!r}", file=sys.stderr)
    return str(version)
