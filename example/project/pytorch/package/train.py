"""Train a small CNN on the bundled MNIST digits and record the run in MLflow.

    mlflow run --env-manager local projects/<project> -P epochs=2   (README.md: every way)
    python -m <package>.train --epochs=2                            (from the project folder)

Every project has the same parts, in this order: (1) check the parameters, before any slow
import; (2) load the data through the shared data_loader; (3) inside one MLflow run, log the
params, train, log the metrics, log the model with a signature and an input example, and
register it when asked; (4) print where the result is. Replace the model and the data; keep
the shape.
"""

from __future__ import annotations

import argparse
import os
import sys

from project_tools.cli import OneLineParser, model_name, number, seed
from project_tools.docker_guard import require_kept_artifacts

PROG = f"{__package__}.train"  # e.g. my_exp.train: the prefix of every error line
VAL_FRACTION = 0.1  # share of the training digits held out to validate each epoch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """(1) `mlflow run -P epochs=abc` passes any value through: check each one here."""
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--epochs", type=number(int, 1))
    add("--batch-size", type=number(int, 1))
    add("--learning-rate", type=number(float, 0, open_low=True))
    add("--seed", type=seed)
    add("--registered-model-name", type=model_name, help="register the model")
    # The defaults are written once, in the MLproject beside this package: take them from there.
    parser.use_mlproject_defaults(__file__)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # a bad value stops here, in a second
    require_kept_artifacts(PROG)  # a model that a container would lose: stop here

    import mlflow
    import torch
    from mlflow.models import infer_signature
    from torch.nn import functional as F

    from data_loader import load_mnist, make_loader, split_train_val
    from project_tools.registry import RegistryError, register_candidate
    from project_tools.tracking import record_source, shown_store

    from .model import SmallCNN, accuracy

    # (2) The bundled sample (8,000 training and 2,000 test digits), through the data_loader
    # link in the project folder. Seeding makes two runs with one seed record the same metrics.
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_full, test = load_mnist(split="train"), load_mnist(split="test")
    train_set, val_set = split_train_val(train_full, VAL_FRACTION, args.seed)
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    val_loader, test_loader = make_loader(val_set, 1000), make_loader(test, 1000)
    model = SmallCNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)

    # (3) `mlflow run` starts the run and passes its id in MLFLOW_RUN_ID: start_run() resumes
    # it (run directly, it starts a new one).
    with mlflow.start_run() as run:
        record_source()  # the commit's state: what `make reproduce` needs
        # `mlflow run` has logged the -P values as typed (1e-3 stays "1e-3"), and MLflow
        # refuses to change a logged param: log the others only, and what it cannot know.
        new = {k: v for k, v in vars(args).items() if k not in run.data.params and v != ""}
        mlflow.log_params(new | {"train_size": len(train_set), "device": str(device)})

        for epoch in range(1, args.epochs + 1):
            model.train()
            total_loss = 0.0
            for images, labels in train_loader:
                images, labels = images.to(device), labels.to(device)
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(labels)
            metrics = {
                "train_loss": total_loss / len(train_set),
                "val_accuracy": accuracy(model, val_loader, device),
            }
            mlflow.log_metrics(metrics, step=epoch)  # one point per epoch in the UI's charts
            print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

        test_accuracy = accuracy(model, test_loader, device)
        mlflow.log_metric("test_accuracy", test_accuracy)

        # The model is exported (pt2) on the CPU so that it loads anywhere; MLflow checks the
        # input example by loading it, on the CPU too with this variable set.
        os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
        model = model.cpu().eval()
        example = test.images[:4]
        model_uri = mlflow.pytorch.log_model(
            model,
            name="model",
            # The signature tells a server what input to expect; the example documents it.
            signature=infer_signature(example.numpy(), model(example).detach().numpy()),
            input_example=example.numpy(),
            # The flavor's pinned requirements: no slow tracing of the imports.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        ).model_uri
        if args.registered_model_name:
            try:  # a new version, aliased "candidate" and tagged with the ranking metric
                metrics = {"test_accuracy": test_accuracy}
                name = args.registered_model_name
                register_candidate(model_uri, name, metrics, "test_accuracy", True)
            except RegistryError as exc:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
                mlflow.end_run("FAILED")
                return 1

    # (4) One line a person can act on.
    print(f"Test accuracy: {test_accuracy:.2%}  run id: {run.info.run_id}  model: {model_uri}")
    print(f"Tracking store: {shown_store()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
