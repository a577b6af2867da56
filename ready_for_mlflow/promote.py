"""Move a registered model's ``champion`` alias to a version only when it passes its evaluation.

    make promote MODEL=mnist VERSION=4
    (python -m mlflow_project_store.ready_for_mlflow.promote mnist 4)

The version is evaluated with ``mlflow.models.evaluate`` on the held-out data of its kind
(ready_for_mlflow/evaluation.py), in an evaluation run linked to it. MLflow's validation then
checks the result against the version's gate (ready_for_mlflow/gates.py, found by the
``ranking_metric`` tag that ``project_tools.registry.register_candidate`` writes): an absolute
floor, and, when there is a champion, a minimum improvement over the champion's evaluation on
the same data (recorded when it was promoted; evaluated now if there is none). ``champion``
moves only when validation passes; otherwise one line names the threshold that failed, with
both values, and the exit status is 1. The tracking server is the one in MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.project_tools.registry import CHAMPION, RANKING_METRIC_TAG
from mlflow_project_store.project_tools.tracking import require_tracking_server
from mlflow_project_store.ready_for_mlflow.evaluation import HELDOUT, Evaluation, evaluate, recorded
from mlflow_project_store.ready_for_mlflow.gates import GATES, Gate

PROG = "promote"


class PromoteError(Exception):
    """A missing model, version, tag or gate, worded for the user (exit status 2)."""


class Refused(Exception):
    """The version failed validation or could not be evaluated (exit status 1)."""


def gate_of(version: ModelVersion) -> Gate:
    """The evaluation gate of ``version``, by its ranking metric."""
    label = f"version {version.version} of {version.name!r}"
    metric = version.tags.get(RANKING_METRIC_TAG)
    if metric is None:
        raise PromoteError(
            f"{label} has no {RANKING_METRIC_TAG!r} tag: register it with "
            f"project_tools.registry.register_candidate"
        )
    if metric not in GATES:
        raise PromoteError(
            f"{label} is ranked by {metric!r}, which has no evaluation gate: add one to "
            f"ready_for_mlflow/gates.py (gates: {', '.join(sorted(GATES))})"
        )
    return GATES[metric]


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def evaluation_of(
    client: MlflowClient, version: ModelVersion, gate: Gate, data: Dataset, reuse: bool
) -> Evaluation:
    """Evaluate ``version`` (or, with ``reuse``, take its evaluation of the same data)."""
    if reuse and (done := recorded(client, version, gate, data)) is not None:
        return done
    try:
        return evaluate(client, version, gate, data)
    except MlflowException:
        raise
    except Exception as exc:  # the model cannot predict the held-out data: say so in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Refused(
            f"evaluating version {version.version} of {version.name!r} on the {gate.heldout} "
            f"held-out data failed: {reason}"
        ) from exc


def promote(client: MlflowClient, name: str, version: str) -> str:
    """Evaluate ``version``; set ``champion`` on it if it passes its gate; return what happened."""
    try:
        candidate = client.get_model_version(name, version)
    except MlflowException as exc:
        raise PromoteError(f"no version {version!r} of registered model {name!r}") from exc
    gate = gate_of(candidate)
    champion = current_champion(client, name)
    if champion is not None and champion.version == candidate.version:
        return f"{name} version {version} is already {CHAMPION}"
    data = HELDOUT[gate.heldout].load()
    evaluated = evaluation_of(client, candidate, gate, data, reuse=False)
    baseline = None if champion is None else evaluation_of(client, champion, gate, data, True)
    kept = f"kept {CHAMPION} at version {champion.version}" if champion else f"no {CHAMPION}"
    try:
        mlflow.validate_evaluation_results(
            gate.thresholds(against_champion=baseline is not None),
            evaluated.result(gate.metric),
            None if baseline is None else baseline.result(gate.metric),
        )
    except ModelValidationFailedException as exc:
        why = " ".join(exc.message.split())
        raise Refused(f"{name} version {version} failed validation ({kept}): {why}") from exc
    client.set_registered_model_alias(name, CHAMPION, candidate.version)
    score = f"{gate.metric} {evaluated.metrics[gate.metric]:.4f} meets the floor {gate.floor:g}"
    if baseline is None:
        reason = f"{score}; there was no {CHAMPION}"
    else:
        reason = (
            f"{score} and beats {baseline.metrics[gate.metric]:.4f} of version "
            f"{champion.version} by at least {gate.min_improvement:g}"
        )
    return (
        f"promoted {name} version {version} to {CHAMPION}: {reason} "
        f"(evaluation run {evaluated.run_id})"
    )


def quiet() -> None:
    """Leave stdout and stderr to this tool's line: no MLflow log lines, warnings, progress bars
    or run links while models load and evaluate (the line names the evaluation run)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # The MNIST models are exported on the CPU; load them there on a CUDA host too.
    os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("name", help="registered model name")
    parser.add_argument("version", help="the version to promote")
    args = parser.parse_args(argv)
    require_tracking_server(PROG)
    quiet()
    try:
        print(promote(MlflowClient(), args.name, args.version))
    except PromoteError as exc:
        fail(PROG, str(exc), 2)
    except Refused as exc:
        fail(PROG, str(exc), 1)
    except MlflowException as exc:
        fail(PROG, exc.message.strip().splitlines()[0], 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
