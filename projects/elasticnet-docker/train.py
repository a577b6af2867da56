"""Fit an ElasticNet on scikit-learn's diabetes data and record it in MLflow.

`mlflow run` passes `-P alpha=abc` through unchecked, so the values are checked here first.
"""

from __future__ import annotations

import argparse
import sys

NAME = "train.py"


def number(minimum: float, maximum: float | None = None):
    """An argparse type for a float in [minimum, maximum]."""
    expected = (
        f"a number >= {minimum:g}"
        if maximum is None
        else (f"a number between {minimum:g} and {maximum:g}")
    )

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (value >= minimum and (maximum is None or value <= maximum)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.splitlines()[0])
    parser.error = lambda message: parser.exit(2, f"{NAME}: error: {message}\n")  # one line
    parser.add_argument(
        "--alpha", type=number(0.0), required=True, help="regularization strength (>= 0)"
    )
    parser.add_argument(
        "--l1-ratio",
        type=number(0.0, 1.0),
        default=0.1,
        help="mix of L1 and L2 penalty, 0 = ridge, 1 = lasso",
    )
    parser.add_argument("--seed", type=int, default=42, help="seeds the train/test split")
    parser.add_argument("--registered-model-name", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    from data_loader import load_diabetes_split

    x_train, x_test, y_train, y_test = load_diabetes_split(seed=args.seed)
    model = ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio, random_state=args.seed)
    with mlflow.start_run() as run:
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
        metrics = {
            "rmse": root_mean_squared_error(y_test, predicted),
            "mae": mean_absolute_error(y_test, predicted),
            "r2": r2_score(y_test, predicted),
        }
        mlflow.log_metrics(metrics)
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_test, predicted),
            input_example=x_test.head(3),
            registered_model_name=args.registered_model_name or None,
        )
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()), f"run id: {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
