"""Test-only fault: one rank of mnist.distributed.train raises mid-training, as a bug in it would.

Python imports ``sitecustomize`` at start-up from the first folder of its path that has one;
tests/helpers/ddp.py's ``failing_rank_env`` puts this folder first on PYTHONPATH. Every Python
process of the run imports it, but only the one whose RANK (torchrun sets it in each training
process's environment, and nowhere else) is MNIST_DDP_FAULT_RANK is changed: its optimizer
raises a ValueError before its step number MNIST_DDP_FAULT_STEP. The project's code is untouched.
"""

from __future__ import annotations

import os

FAULT_RANK = "MNIST_DDP_FAULT_RANK"
FAULT_STEP = "MNIST_DDP_FAULT_STEP"


def install(rank: str, fail_at: int) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = 0

    def step(optimizer: object, args: object, kwargs: object) -> None:
        nonlocal steps
        steps += 1
        if steps == fail_at:
            raise ValueError(f"fault injected into rank {rank} at optimizer step {fail_at}")

    register_optimizer_step_pre_hook(step)


if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get(FAULT_RANK):
    install(os.environ["RANK"], int(os.environ.get(FAULT_STEP, "1")))
