"""What the sweep's run records: the search history (a table and a plot) and the best trial."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from project_tools.registry import register_candidate

from .search import Trial

HISTORY_TABLE = "search_history.json"
HISTORY_PLOT = "search_history.png"


class RegisterError(Exception):
    """The best trial's model cannot be registered; the message says why."""


def history(trials: list[Trial], metric: str) -> pd.DataFrame:
    rows = [
        {
            "trial": trial.number,
            "run_id": trial.run_id or "",
            "state": trial.state,
            **trial.params,
            metric: trial.value,
            "seconds": round(trial.seconds, 1),
            "reason": trial.reason,
        }
        for trial in sorted(trials, key=lambda trial: trial.number)
    ]
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, metric: str, maximize: bool) -> plt.Figure:
    """Each trial's metric, the best so far, and the failed trials along the bottom."""
    figure, axes = plt.subplots(figsize=(7, 4))
    finished = table.dropna(subset=[metric])
    axes.plot(finished["trial"], finished[metric], "o", label=metric)
    best = finished[metric].cummax() if maximize else finished[metric].cummin()
    axes.step(finished["trial"], best, where="post", label="best so far")
    failed = table[table["state"] != "FINISHED"]["trial"]
    if len(failed):
        axes.plot(failed, [axes.get_ylim()[0]] * len(failed), "x", color="red", label="failed")
    axes.set_xlabel("trial")
    axes.set_ylabel(metric)
    axes.set_title(f"{len(finished)} of {len(table)} trials finished")
    axes.legend()
    figure.tight_layout()
    return figure


def log_history(trials: list[Trial], metric: str, maximize: bool) -> None:
    table = history(trials, metric)
    mlflow.log_table(table, HISTORY_TABLE)
    figure = plot(table, metric, maximize)
    mlflow.log_figure(figure, HISTORY_PLOT)
    plt.close(figure)
    mlflow.log_metrics(
        {
            "trials_finished": int((table["state"] == "FINISHED").sum()),
            "trials_failed": int((table["state"] != "FINISHED").sum()),
        }
    )


def best_model_uri(run_id: str) -> str | None:
    """``models:/<id>`` of the model the run logged, if it logged one."""
    outputs = MlflowClient().get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    return f"models:/{models[0].model_id}" if models else None


def log_best(best: Trial) -> str | None:
    """Record the best trial on the sweep's run (its metric is logged as each trial ends);
    return its model URI, if it logged a model."""
    mlflow.log_params({f"best_{key}": value for key, value in best.params.items()})
    model_uri = best_model_uri(best.run_id)
    tags = {"best_trial": str(best.number), "best_run_id": best.run_id}
    if model_uri:
        tags["best_model_uri"] = model_uri
    mlflow.set_tags(tags)
    return model_uri


def register_best(
    best: Trial, model_uri: str | None, name: str, ranking_metric: str, maximize: bool
) -> str:
    """Register the best trial's model as the ``candidate`` version of ``name``, tagged with
    the trial's metrics; return the version."""
    if model_uri is None:
        raise RegisterError(f"the best trial (run {best.run_id}) logged no model to register")
    metrics = MlflowClient().get_run(best.run_id).data.metrics
    if ranking_metric not in metrics:
        raise RegisterError(
            f"the best trial (run {best.run_id}) logged no {ranking_metric!r} to rank the "
            f"version by: set ranking_metric to one of {', '.join(sorted(metrics))}"
        )
    version = register_candidate(model_uri, name, metrics, ranking_metric, maximize)
    mlflow.set_tag("registered_version", f"{name}/{version}")
    return version
