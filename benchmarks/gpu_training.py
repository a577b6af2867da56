"""The default recipe on the GPU against the CPU: images/s and seconds per epoch, side by side.

    python -m benchmarks.gpu_training [--epochs 3]

The prepared script for a machine with CUDA: the mnist projects' default recipe (batch,
learning rate, validation split, seed; ``mnist.recipe.fit``) trains ``--epochs`` epochs of the
bundled digits on the CPU, then on the GPU in float32, then on the GPU with bfloat16 mixed
precision (``torch.autocast``; bfloat16 needs no gradient scaler), each seeded the same, with its
test accuracy. Where no GPU is present it records the CPU row and says so. The GPU's name is
in the results' machine line.
"""

from __future__ import annotations

import contextlib
import time

import torch

from benchmarks.mnist_recipes import default_data, project_defaults
from benchmarks.results import record
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mnist.recipe import evaluate, fit


def train(device: torch.device, epochs: int, mixed_precision: bool) -> dict[str, object]:
    defaults = project_defaults()
    data = default_data(int(defaults["seed"]))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if mixed_precision
        else contextlib.nullcontext()
    )
    epoch_ends: list[float] = []
    start = time.perf_counter()
    with autocast:
        model = fit(
            data.train,
            data.val,
            epochs,
            float(defaults["learning_rate"]),
            device,
            on_epoch=lambda result: epoch_ends.append(time.perf_counter()),
            progress=False,
        )
    # The first epoch carries the warm-up (CUDA context, kernel selection): timed apart.
    steady = (epoch_ends[-1] - epoch_ends[0]) / (epochs - 1)
    return {
        "device": str(device),
        "precision": "bfloat16 autocast" if mixed_precision else "float32",
        "epochs": epochs,
        "seconds per epoch (after the first)": round(steady, 3),
        "images/s": round(data.train_size / steady, 1),
        "first epoch (s)": round(epoch_ends[0] - start, 2),
        "test accuracy": round(evaluate(model, data.test, device)[1], 4),
    }


def main() -> None:
    parser = OneLineParser(prog="benchmarks.gpu_training", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=number(int, 2), default=3)
    args = parser.parse_args()
    rows = [train(torch.device("cpu"), args.epochs, mixed_precision=False)]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        rows += [train(gpu, args.epochs, mixed_precision=False)]
        rows += [train(gpu, args.epochs, mixed_precision=True)]
        cpu_rate = rows[0]["images/s"]
        for row in rows[1:]:
            row["speedup over the CPU"] = round(float(row["images/s"]) / float(cpu_rate), 1)
        notes = f"GPU: {torch.cuda.get_device_name(0)}; the bundled digits"
    else:
        notes = "no GPU present: the CPU row only (run this on a machine with CUDA)"
    record("gpu_training", rows, notes, f"python -m benchmarks.gpu_training --epochs {args.epochs}")


if __name__ == "__main__":
    main()
