"""Move a registered model's ``champion`` alias to a version only when it ranks better.

    python -m ready_for_mlflow.promote mnist 4            (or: make promote MODEL=mnist VERSION=4)

Each version says how it is ranked: training registers it through
``project_tools.registry.register_candidate``, which tags it with its metrics plus
``ranking_metric`` (e.g. ``test_accuracy`` or ``rmse``) and ``ranking_order``
(``higher_is_better`` or ``lower_is_better``). The tracking server is the one in
MLFLOW_TRACKING_URI. Prints what it did; a tie keeps the current champion.
"""

from __future__ import annotations

import sys

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from project_tools.cli import OneLineParser, fail
from project_tools.registry import CHAMPION, HIGHER, RANKING_METRIC_TAG, RANKING_ORDER_TAG

PROG = "promote"


class PromoteError(Exception):
    """A missing model, version, tag or metric, worded for the user."""


def ranking(version: ModelVersion) -> tuple[str, bool, float]:
    """(metric, higher_is_better, value) of ``version``, from its tags."""
    label = f"version {version.version} of {version.name!r}"
    metric = version.tags.get(RANKING_METRIC_TAG)
    if metric is None:
        raise PromoteError(
            f"{label} has no {RANKING_METRIC_TAG!r} tag: register it with "
            f"project_tools.registry.register_candidate"
        )
    text = version.tags.get(metric)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PromoteError(f"{label}: tag {metric}={text!r} is not a number") from None
    return metric, version.tags.get(RANKING_ORDER_TAG, HIGHER) == HIGHER, value


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def promote(client: MlflowClient, name: str, version: str) -> str:
    """Set ``champion`` on ``version`` if it beats the current champion; return what happened."""
    try:
        candidate = client.get_model_version(name, version)
    except MlflowException as exc:
        raise PromoteError(f"no version {version!r} of registered model {name!r}") from exc
    metric, higher_is_better, score = ranking(candidate)
    champion = current_champion(client, name)
    if champion is not None and champion.version == candidate.version:
        return f"{name} version {version} is already {CHAMPION} ({metric} {score:.4f})"
    if champion is not None:
        _, _, best = ranking(champion)
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
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("name", help="registered model name")
    parser.add_argument("version", help="the version to promote")
    args = parser.parse_args(argv)
    try:
        print(promote(MlflowClient(), args.name, args.version))
    except PromoteError as exc:
        fail(PROG, str(exc), 2)
    except MlflowException as exc:
        fail(PROG, exc.message.strip().splitlines()[0], 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
