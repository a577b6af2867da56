"""Time the project's MNIST recipe against the pytorch/examples reference, side by side.

    python -m benchmarks.mnist_recipes [--seeds 3] [--reference-epochs 3]

Both train on the bundled sample (8,000 train / 2,000 test digits) on the CPU with the torch
threads this machine gives, for each of ``--seeds`` seeds starting at the MLflow project's
default seed. Ours is trained exactly as ``make run`` trains at the defaults of
projects/mnist-conda/MLproject (same split, loaders and ``fit``), so for the default seed it
prints the test accuracy ``make run`` prints. Each training runs in a fresh child process, the
two recipes in turns, so that its peak RSS is its own and a busy spell of the shared machine
falls on both; the time ratio is ours over the reference's, summed over the seeds. Timing
covers training only (for ours: ``fit``, with its per-epoch check on the validation digits);
loading the data and the test evaluation are excluded.
"""

from __future__ import annotations

import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from mlflow_project_store.data_loader import load_mnist, make_loader, split_train_val
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mnist.recipe import evaluate, fit

CPU = torch.device("cpu")
MLPROJECT = Path(__file__).resolve().parents[1] / "projects" / "mnist-conda" / "MLproject"
REFERENCE = "pytorch/examples reference"
OURS = "mnist-conda defaults"


class Row(NamedTuple):
    recipe: str
    seed: int
    epochs: int
    seconds: float
    accuracy: float
    peak_rss_mb: float


class ReferenceNet(nn.Module):
    """pytorch/examples mnist/main.py: 2 conv + 2 fc, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.1307) / 0.3081
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout1(x).flatten(1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reference(seed: int, epochs: int) -> Row:
    """Adadelta lr 1.0, StepLR gamma 0.7, batch 64, on all 8,000 training digits."""
    torch.manual_seed(seed)
    train, test = load_mnist(split="train"), load_mnist(split="test")
    loader = make_loader(train, 64, shuffle=True, seed=seed)
    model = ReferenceNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        scheduler.step()
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, make_loader(test, 1000), CPU)[1]
    return Row(REFERENCE, seed, epochs, seconds, accuracy, peak_rss_mb())


def project_defaults() -> dict[str, object]:
    """The default parameters of projects/mnist-conda's main entry point."""
    spec = yaml.safe_load(MLPROJECT.read_text())["entry_points"]["main"]["parameters"]
    return {name: value["default"] for name, value in spec.items()}


class DefaultData(NamedTuple):
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_size: int


def default_data(seed: int) -> DefaultData:
    """The loaders ``mnist.train`` makes at the project's defaults, and seed torch as it does."""
    defaults = project_defaults()
    train_full, test = load_mnist(split="train"), load_mnist(split="test")
    torch.manual_seed(seed)
    train_set, val_set = split_train_val(train_full, float(defaults["val_fraction"]), seed)
    loader = make_loader(train_set, int(defaults["batch_size"]), shuffle=True, seed=seed)
    return DefaultData(loader, make_loader(val_set, 1000), make_loader(test, 1000), len(train_set))


def ours(seed: int) -> Row:
    """The steps of ``mnist.train`` at the project's defaults, without the MLflow records."""
    defaults = project_defaults()
    epochs = int(defaults["epochs"])
    data = default_data(seed)
    start = time.perf_counter()
    model = fit(data.train, data.val, epochs, float(defaults["learning_rate"]), CPU, progress=False)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, data.test, CPU)[1]
    return Row(OURS, seed, epochs, seconds, accuracy, peak_rss_mb())


def in_child(function, *args) -> Row:
    """Run ``function(*args)`` in a fresh process: its peak RSS is that training's alone."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def summary(rows: list[Row], name: str, reference_seconds: float) -> str:
    mine = [row for row in rows if row.recipe == name]
    accuracies = [row.accuracy for row in mine]
    seconds = sum(row.seconds for row in mine)
    return (
        f"| {name} | {mine[0].epochs} | {len(mine)} | {min(accuracies):.2%} | "
        f"{statistics.mean(accuracies):.2%} | {seconds / reference_seconds:.2f} | "
        f"{max(row.peak_rss_mb for row in mine):.0f} |"
    )


def main() -> None:
    parser = OneLineParser(prog="benchmarks.mnist_recipes", description=__doc__.splitlines()[0])
    parser.add_argument("--reference-epochs", type=number(int, 1), default=3)
    parser.add_argument(
        "--seeds", type=number(int, 1), default=3, help="how many seeds, from the default"
    )
    args = parser.parse_args()
    first_seed = int(project_defaults()["seed"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        "\n| recipe | seed | epochs | training time (s) | test accuracy | peak RSS (MB) |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    rows: list[Row] = []
    for seed in range(first_seed, first_seed + args.seeds):
        pair = [(reference, seed, args.reference_epochs), (ours, seed)]
        if seed % 2:  # take turns at going first
            pair.reverse()
        for function, *function_args in pair:
            row = in_child(function, *function_args)
            rows.append(row)
            print(
                f"| {row.recipe} | {row.seed} | {row.epochs} | {row.seconds:.1f} | "
                f"{row.accuracy:.2%} | {row.peak_rss_mb:.0f} |",
                flush=True,
            )
    reference_seconds = sum(row.seconds for row in rows if row.recipe == REFERENCE)
    print(
        "\n| recipe | epochs | seeds | min test accuracy | mean test accuracy | "
        "time / reference | peak RSS (MB) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    print(summary(rows, REFERENCE, reference_seconds))
    print(summary(rows, OURS, reference_seconds))


if __name__ == "__main__":
    main()
