"""What recording a run in a live tracking server costs the training loop, side by side.

    python -m benchmarks.tracking_overhead [--epochs 14] [--repeats 2]

The same seeded training (mnist.recipe.fit at the project's default epochs, batch, learning
rate, validation split and seed, on the bundled digits, on the CPU) runs with tracking off and
with what mnist.train records: params, both datasets, the step loss every 10 steps (queued, as
mnist.train queues them), the per-epoch metrics and the model (pt2), to an
`mlflow server` (SQLite store, artifacts proxied to a local S3 endpoint) on loopback. The
figure is training images per second over the recorded section, in turns, best of
``--repeats`` (other work on a shared machine only slows a run down). The tracked rows are
also split: the loop with its metrics alone, the datasets, the model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
import torch

from benchmarks.mnist_recipes import project_defaults
from benchmarks.results import record
from mlflow_project_store.data_loader import load_mnist, make_loader, split_train_val
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mlflow_project_store.ready_for_mlflow.servers import mlflow_server, moto_s3
from mnist.recipe import EpochResult, fit
from mnist.tracking import (
    log_datasets,
    log_epoch_metrics,
    log_model,
    log_step_loss,
    metrics_sent_at_exit,
)

CPU = torch.device("cpu")
DEFAULTS = project_defaults()
BATCH, LEARNING_RATE, SEED = (
    int(DEFAULTS["batch_size"]),
    float(DEFAULTS["learning_rate"]),
    int(DEFAULTS["seed"]),
)


def untracked(loaders, epochs: int) -> dict[str, float]:
    torch.manual_seed(SEED)
    start = time.perf_counter()
    fit(*loaders, epochs, LEARNING_RATE, CPU, progress=False)
    return {"total": time.perf_counter() - start}


def tracked(loaders, epochs: int, data, attempt: int) -> dict[str, float]:
    """What mnist.train records, timed by part."""

    def on_epoch(result: EpochResult) -> None:
        metrics = result._asdict()
        log_epoch_metrics(metrics.pop("epoch"), metrics)

    torch.manual_seed(SEED)
    mlflow.set_experiment(f"overhead-{attempt}")
    parts: dict[str, float] = {}
    start = time.perf_counter()
    with mlflow.start_run():
        mlflow.log_params({"epochs": epochs, "batch_size": BATCH, "learning_rate": LEARNING_RATE})
        mark = time.perf_counter()
        log_datasets(*data)
        parts["datasets"] = time.perf_counter() - mark
        mark = time.perf_counter()
        with metrics_sent_at_exit():  # the loop's time includes storing every point
            model = fit(*loaders, epochs, LEARNING_RATE, CPU, log_step_loss, on_epoch, False)
        parts["loop"] = time.perf_counter() - mark
        mark = time.perf_counter()
        log_model(model, data[1].images[:4])
        parts["model"] = time.perf_counter() - mark
    parts["total"] = time.perf_counter() - start
    return parts


def main() -> None:
    parser = OneLineParser(prog="benchmarks.tracking_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=number(int, 1), default=int(DEFAULTS["epochs"]))
    parser.add_argument("--repeats", type=number(int, 1), default=2)
    args = parser.parse_args()
    train_full, test = load_mnist(split="train"), load_mnist(split="test")
    train_set, val_set = split_train_val(train_full, float(DEFAULTS["val_fraction"]), SEED)
    loaders = (make_loader(train_set, BATCH, shuffle=True, seed=SEED), make_loader(val_set, 1000))
    images = len(train_set) * args.epochs
    off, on = [], []
    with tempfile.TemporaryDirectory(prefix="tracking-overhead-") as folder:
        work = Path(folder)
        with moto_s3(work) as s3, mlflow_server(work, f"sqlite:///{work}/mlflow.db", s3) as server:
            mlflow.set_tracking_uri(server.url)
            for attempt in range(args.repeats):
                off.append(untracked(loaders, args.epochs))
                on.append(tracked(loaders, args.epochs, (train_full, test), attempt))
    best_off = min(r["total"] for r in off)
    best_on = min(on, key=lambda r: r["total"])
    best_loop = min(r["loop"] for r in on)

    def rate(seconds: float) -> float:
        return round(images / seconds, 1)

    rows = [
        {"training": "tracking off", "seconds": best_off, "images/s": rate(best_off)},
        {
            "training": "loop + step/epoch metrics to the server",
            "seconds": best_loop,
            "images/s": rate(best_loop),
            "ratio to off": round(best_off / best_loop, 3),
            "target": ">= 0.97",
        },
        {
            "training": "everything mnist.train records (params, datasets, metrics, model)",
            "seconds": best_on["total"],
            "images/s": rate(best_on["total"]),
            "ratio to off": round(best_off / best_on["total"], 3),
            "target": ">= 0.97",
        },
        {"training": "  of which: datasets", "seconds": best_on["datasets"]},
        {"training": "  of which: model (pt2 export + upload)", "seconds": best_on["model"]},
    ]
    notes = (
        f"{args.epochs} epochs of {len(train_set)} digits, batch {BATCH}, CPU "
        f"({torch.get_num_threads()} threads), best of {args.repeats} in turns; server on loopback."
    )
    command = f"python -m benchmarks.tracking_overhead --epochs {args.epochs}"
    record("tracking_overhead", rows, notes, command)


if __name__ == "__main__":
    main()
