"""Fit an ElasticNet on scikit-learn's diabetes data and record it in MLflow.

    mlflow run --build-image -A network=host projects/elasticnet-docker -P alpha=0.001
        (with a tracking server; for the local store see the project's README)
    python -m elasticnet.train --alpha 0.001        (from this folder)

`mlflow run` passes `-P alpha=abc` through unchecked, so the values are checked here first.
"""

from __future__ import annotations

import argparse
import sys

from project_tools.cli import OneLineParser, model_name, number, seed
from project_tools.docker_guard import require_kept_artifacts
from project_tools.tracking import record_source, require_tracking_server

PROG = "elasticnet.train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--alpha", type=number(float, 0), required=True, help="regularization strength (>= 0)")
    add("--l1-ratio", type=number(float, 0, 1), help="0 = ridge, 1 = lasso")
    add("--seed", type=seed, help="seeds the train/test split")
    add("--registered-model-name", type=model_name, help="register the model")
    parser.use_mlproject_defaults(__file__)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_kept_artifacts(PROG)  # a model that a container would lose: stop here
    require_tracking_server(PROG)

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    from data_loader import load_diabetes_split
    from project_tools.registry import RegistryError, register_candidate

    x_train, x_test, y_train, y_test = load_diabetes_split(seed=args.seed)
    model = ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio, random_state=args.seed)
    with mlflow.start_run() as run:
        record_source()
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
        metrics = {
            "rmse": root_mean_squared_error(y_test, predicted),
            "mae": mean_absolute_error(y_test, predicted),
            "r2": r2_score(y_test, predicted),
        }
        mlflow.log_metrics(metrics)
        model_uri = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_test, predicted),
            input_example=x_test.head(3),
        ).model_uri
        if args.registered_model_name:
            try:
                register_candidate(model_uri, args.registered_model_name, metrics, "rmse", False)
            except RegistryError as exc:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
                mlflow.end_run("FAILED")
                return 1
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()), f"run id: {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
