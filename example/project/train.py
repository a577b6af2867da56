"""Template entry point: a logistic-regression digit classifier, recorded in MLflow.

The parts every project has, in order: (1) parse and validate the parameters, before any slow
import; (2) load data through the shared data_loader; (3) inside one MLflow run, log params,
train, log metrics, log the model with a signature and an input example; (4) say where the
result is. Replace the model and the data; keep the shape.
"""

from __future__ import annotations

import argparse
import sys

NAME = "train.py"


def positive(kind: type):
    """An argparse type: a number of ``kind`` greater than zero, or a one-line error."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} > 0, got {text!r}")
        return value

    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.splitlines()[0])
    # argparse prints usage plus the error; one line that names the bad value is clearer.
    parser.error = lambda message: parser.exit(2, f"{NAME}: error: {message}\n")
    parser.add_argument("--C", type=positive(float), default=0.5)
    parser.add_argument("--max-iter", type=positive(int), default=200)
    parser.add_argument("--train-samples", type=positive(int), default=8000)
    parser.add_argument("--registered-model-name", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # (1) fail fast, before the slow imports below

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from data_loader import load_mnist_arrays  # (2) the shared loader, through the link

    train_images, train_labels = load_mnist_arrays(split="train")
    test_images, test_labels = load_mnist_arrays(split="test")
    x_train = train_images[: args.train_samples].reshape(-1, 784).astype("float32") / 255
    y_train = train_labels[: args.train_samples]
    x_test = test_images.reshape(-1, 784).astype("float32") / 255

    # (3) `mlflow run` has started a run and passes its id in MLFLOW_RUN_ID: start_run()
    # resumes it (run directly, `python train.py`, it starts a new one).
    with mlflow.start_run() as run:
        # mlflow run logs the -P values itself; log what it cannot know.
        mlflow.log_params({"train_size": len(x_train), "model": "LogisticRegression"})
        model = LogisticRegression(C=args.C, max_iter=args.max_iter)
        model.fit(x_train, y_train)
        mlflow.log_metrics(
            {
                "train_accuracy": model.score(x_train, y_train),
                "test_accuracy": model.score(x_test, test_labels),
            }
        )
        # The signature tells a server what input to expect; the example documents it.
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_test[:5], model.predict(x_test[:5])),
            input_example=x_test[:2],
            registered_model_name=args.registered_model_name or None,
        )
    # (4) one line a person can act on
    print(f"test accuracy {model.score(x_test, test_labels):.2%}, run id {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
