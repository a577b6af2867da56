"""Time the project's MNIST recipe against the pytorch/examples reference, side by side.

Both train on the bundled sample (8,000 train / 2,000 test digits) on the CPU with the
torch threads this machine gives. Timing covers training only (data is loaded first,
test evaluation is excluded). Reproduce with `make benchmark`.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn
from torch.nn import functional as F

from data_loader import load_mnist, make_loader, split_train_val
from mnist.recipe import evaluate, fit

CPU = torch.device("cpu")


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


def reference(epochs: int, seed: int) -> list[tuple[str, int, float, float]]:
    """Adadelta lr 1.0, StepLR gamma 0.7, batch 64, on all 8,000 training digits."""
    torch.manual_seed(seed)
    train, test = load_mnist(split="train"), load_mnist(split="test")
    loader, test_loader = make_loader(train, 64, shuffle=True, seed=seed), make_loader(test, 1000)
    model = ReferenceNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    rows, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        scheduler.step()
        elapsed += time.perf_counter() - start
        accuracy = evaluate(model, test_loader, CPU)[1]
        rows.append(("pytorch/examples reference", epoch, elapsed, accuracy))
    return rows


def ours(epochs: int, seed: int) -> tuple[str, int, float, float]:
    """This repo's recipe at its defaults (batch 64, peak lr 1e-3, 10% held out for val)."""
    torch.manual_seed(seed)
    train_full, test = load_mnist(split="train"), load_mnist(split="test")
    train_set, val_set = split_train_val(train_full, 0.1, seed)
    loader = make_loader(train_set, 64, shuffle=True, seed=seed)
    start = time.perf_counter()  # includes fit()'s per-epoch check on the 800 val digits
    model = fit(loader, make_loader(val_set, 1000), epochs, 1e-3, CPU, progress=False)
    elapsed = time.perf_counter() - start
    accuracy = evaluate(model, make_loader(test, 1000), CPU)[1]
    return ("mnist-conda default recipe", epochs, elapsed, accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {machine}")
    rows = [*reference(args.reference_epochs, args.seed), ours(args.epochs, args.seed)]
    print("\n| recipe | epochs | training time (s) | test accuracy |\n| --- | --- | --- | --- |")
    for name, epochs, seconds, accuracy in rows:
        print(f"| {name} | {epochs} | {seconds:.1f} | {accuracy:.2%} |")
