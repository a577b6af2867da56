"""Training throughput of projects/mnist-ddp-conda with 1 and N processes, and the scaling.

    python -m benchmarks.ddp_throughput [--device cpu|cuda] [--epochs 2] [--batch-size 128]

Each configuration runs the project's own entry point (``python -m mnist_ddp.launch``: torchrun,
DistributedDataParallel, gloo on the CPU, nccl on CUDA) on the bundled digits, recording into a
throwaway tracking store. Its figure is rank 0's ``train_images_per_second`` (the images all
ranks trained in an epoch over the epoch's time), the median over the epochs after the first,
and the best of ``--repeats`` runs taken in turns with the other configurations (other work on
a shared machine only ever slows a run down).

On the CPU: 1 and 2 processes, each with half the cores as threads, so that the efficiency
(images/s with 2 processes over twice images/s with 1) measures what data parallelism costs:
the gradient all-reduce and the waits between ranks. A last row gives one process all the
cores, the way mnist-conda trains. On CUDA: one process per GPU, 1 and then all of them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from mlflow.tracking import MlflowClient

from scaffold.layout import PROJECTS

PROJECT = PROJECTS / "mnist-ddp-conda"
METRIC = "train_images_per_second"


class Config(NamedTuple):
    processes: int
    threads: int  # per process; 0 on CUDA


class Result(NamedTuple):
    config: Config
    images_per_second: float


def configs(device: str) -> list[Config]:
    if device == "cuda":
        gpus = torch.cuda.device_count()
        return [Config(1, 0)] + ([Config(gpus, 0)] if gpus > 1 else [])
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    return [Config(1, half), Config(2, half), Config(1, cores)]


def measure(config: Config, args: argparse.Namespace, store: Path, attempt: int) -> Result:
    """Run the entry point once; rank 0's images/s over the epochs after the first."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    name = f"{config.processes}x{config.threads}-{attempt}"
    client.create_experiment(name, artifact_location=(store / name).as_uri())
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": name}
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    command = [
        sys.executable,
        "-m",
        "mnist_ddp.launch",
        f"--nproc-per-node={config.processes}",
        f"--epochs={args.epochs}",
        f"--batch-size={args.batch_size}",
        f"--device={args.device}",
    ]
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        sys.exit(f"ddp_throughput: error: {name} failed: {done.stderr[-2000:]}")
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    history = [m.value for m in client.get_metric_history(run.info.run_id, METRIC)]
    return Result(config, statistics.median(history[1:] or history))


def table(results: list[Result], backend: str) -> list[str]:
    base = results[0].images_per_second
    lines = [
        "| processes | threads per process | backend | images/s | speedup | efficiency |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (processes, threads), speed in results:
        speedup = speed / base
        # Efficiency compares processes with the same threads each as the first row.
        same = threads == results[0].config.threads
        efficiency = f"{speedup / processes:.0%}" if same else "-"
        shown = threads or "-"
        lines.append(
            f"| {processes} | {shown} | {backend} | {speed:.0f} | {speedup:.2f}x | {efficiency} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("ddp_throughput: error: --device cuda: CUDA is not available")
    where = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    )
    print(
        f"torch {torch.__version__}, {where}; {args.epochs} epochs of the 7,200 bundled "
        f"training digits, global batch {args.batch_size}, best of {args.repeats}"
    )
    # Other work on the machine skews CPU figures: show how busy it was before.
    print("load average before (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="ddp-throughput-") as folder:
        rounds = [
            [measure(config, args, Path(folder), attempt) for config in configs(args.device)]
            for attempt in range(args.repeats)
        ]
    best = [max(runs, key=lambda r: r.images_per_second) for runs in zip(*rounds, strict=True)]
    print("\n".join(["", *table(best, "nccl" if args.device == "cuda" else "gloo")]))


if __name__ == "__main__":
    main()
