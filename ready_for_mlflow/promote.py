"""Move a registered model's ``champion`` alias to a version only when its metric is better.

    python ready_for_mlflow/promote.py mnist 4                  # by test_accuracy, higher wins
    python ready_for_mlflow/promote.py mnist 4 --metric test_loss --lower-is-better

A version's metric is its tag of that name (training tags the new version with its test
metrics), else the metric of the run that produced it. The tracking server is the one in
MLFLOW_TRACKING_URI. Prints what it did; a tie keeps the current champion.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"


class PromoteError(Exception):
    """A missing model, version or metric, worded for the user."""


def version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float:
    text = version.tags.get(metric)
    if text is None and version.run_id:
        text = client.get_run(version.run_id).data.metrics.get(metric)
    if text is None:
        raise PromoteError(
            f"version {version.version} of {version.name!r} has no {metric!r} tag and its run "
            f"logged no such metric"
        )
    try:
        return float(text)
    except ValueError:
        raise PromoteError(
            f"version {version.version} of {version.name!r}: tag {metric}={text!r} is not a number"
        ) from None


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def promote(
    client: MlflowClient, name: str, version: str, metric: str, higher_is_better: bool = True
) -> str:
    """Set ``champion`` on ``version`` if it beats the current champion; return what happened."""
    try:
        candidate = client.get_model_version(name, version)
    except MlflowException as exc:
        raise PromoteError(f"no version {version!r} of registered model {name!r}") from exc
    score = version_metric(client, candidate, metric)
    champion = current_champion(client, name)
    if champion is not None and champion.version == candidate.version:
        return f"{name} version {version} is already {CHAMPION} ({metric} {score:.4f})"
    if champion is not None:
        best = version_metric(client, champion, metric)
        better = score > best if higher_is_better else score < best
        if not better:
            return (
                f"kept {CHAMPION} at {name} version {champion.version}: version {version} has "
                f"{metric} {score:.4f}, which does not beat {best:.4f}"
            )
        reason = f"{metric} {score:.4f} beats {best:.4f} of version {champion.version}"
    else:
        reason = f"{metric} {score:.4f}; there was no {CHAMPION}"
    client.set_registered_model_alias(name, CHAMPION, candidate.version)
    return f"promoted {name} version {version} to {CHAMPION}: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promote", description=__doc__.splitlines()[0])
    parser.error = lambda message: parser.exit(2, f"promote: error: {message}\n")  # one line
    parser.add_argument("name", help="registered model name")
    parser.add_argument("version", help="the version to promote")
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--lower-is-better", action="store_true", help="e.g. for a loss")
    args = parser.parse_args(argv)
    try:
        message = promote(
            MlflowClient(), args.name, args.version, args.metric, not args.lower_is_better
        )
    except PromoteError as exc:
        print(f"promote: error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"promote: error: {exc.message.strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
