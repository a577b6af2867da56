"""Fit a logistic regression on the bundled MNIST digits and record the run in MLflow.

    mlflow run --env-manager local projects/<project> -P C=0.1   (README.md: every way)
    python -m <package>.train --C=0.1                            (from the project folder)

Every project has the same parts, in this order: (1) check the parameters, before any slow
import; (2) load the data through the shared data_loader; (3) inside one MLflow run, log the
params, train, log the metrics, log the model with a signature and an input example, and
register it when asked; (4) print where the result is. Replace the model and the data; keep
the shape.
"""

from __future__ import annotations

import argparse
import sys

from project_tools.cli import OneLineParser, model_name, number
from project_tools.docker_guard import require_kept_artifacts

PROG = f"{__package__}.train"  # e.g. my_exp.train: the prefix of every error line
PIXELS = 28 * 28


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """(1) `mlflow run -P C=abc` passes any value through: check each one here."""
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--C", type=number(float, 0, open_low=True), help="inverse regularization")
    add("--max-iter", type=number(int, 1), help="solver iterations")
    add("--train-samples", type=number(int, 1), help="training digits used")
    add("--registered-model-name", type=model_name, help="register the model")
    # The defaults are written once, in the MLproject beside this package: take them from there.
    parser.use_mlproject_defaults(__file__)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # a bad value stops here, in a second
    require_kept_artifacts(PROG)  # a model that a container would lose: stop here

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from data_loader import load_mnist_arrays
    from project_tools.registry import RegistryError, register_candidate
    from project_tools.tracking import record_source, shown_store

    # (2) The bundled sample through the data_loader link, as numpy (no torch): uint8 images
    # (N, 28, 28) flattened to N rows of 784 float pixels in [0, 1].
    train_images, y_train = load_mnist_arrays(split="train")
    test_images, y_test = load_mnist_arrays(split="test")
    x_train = train_images[: args.train_samples].reshape(-1, PIXELS).astype("float32") / 255
    y_train = y_train[: args.train_samples]
    x_test = test_images.reshape(-1, PIXELS).astype("float32") / 255

    # (3) `mlflow run` starts the run and passes its id in MLFLOW_RUN_ID: start_run() resumes
    # it (run directly, it starts a new one).
    with mlflow.start_run() as run:
        record_source()  # the commit's state: what `make reproduce` needs
        # `mlflow run` has logged the -P values as typed (1e-3 stays "1e-3"), and MLflow
        # refuses to change a logged param: log the others only, and what it cannot know.
        new = {k: v for k, v in vars(args).items() if k not in run.data.params and v != ""}
        mlflow.log_params(new | {"train_size": len(x_train), "model": "LogisticRegression"})

        model = LogisticRegression(C=args.C, max_iter=args.max_iter)
        model.fit(x_train, y_train)
        metrics = {
            "train_accuracy": model.score(x_train, y_train),
            "test_accuracy": model.score(x_test, y_test),
        }
        mlflow.log_metrics(metrics)

        model_uri = mlflow.sklearn.log_model(
            model,
            name="model",
            # The signature tells a server what input to expect; the example documents it.
            signature=infer_signature(x_test[:5], model.predict(x_test[:5])),
            input_example=x_test[:2],
            # The flavor's pins (scikit-learn, cloudpickle): no slow tracing of the imports.
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_cloudpickle=True),
        ).model_uri
        if args.registered_model_name:
            try:  # a new version, aliased "candidate" and tagged with the ranking metric
                name = args.registered_model_name
                register_candidate(model_uri, name, metrics, "test_accuracy", True)
            except RegistryError as exc:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
                mlflow.end_run("FAILED")
                return 1

    # (4) One line a person can act on.
    print(f"Test accuracy: {metrics['test_accuracy']:.2%}  run id: {run.info.run_id}")
    print(f"Model: {model_uri}  tracking store: {shown_store()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
