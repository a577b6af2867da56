"""Every project under projects/: its smoke run (`mlflow run` with its own tiny configuration),
and every parameter of its main entry point refusing bad values in one line.

Projects are discovered, not listed: a new folder with an MLproject and a smoke.yaml is
tested without editing this file (a new parameter name needs its bad values in REFUSED).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.projects._project_spec import EntryPoint, load_project

from project_tools.cli import MAX_MODEL_NAME, model_name
from scaffold.layout import PROJECTS, ROOT
from tests.helpers.projects import (
    assert_smoke_run,
    project_dirs,
    smoke_config,
    smoke_params,
    smoke_run,
)


def test_projects_are_found() -> None:
    assert PROJECTS / "mnist-conda" in project_dirs()


@pytest.mark.slow
@pytest.mark.parametrize("project", smoke_params())
def test_smoke_run(project: Path, tracking_uri: str, tmp_path: Path) -> None:
    """`mlflow run` the project as its smoke.yaml says (Docker projects: --build-image)."""
    result = smoke_run(project, tracking_uri, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(project, tracking_uri)


def test_a_project_left_out_names_the_test_that_runs_it() -> None:
    """``covered_by`` in smoke.yaml must name a test function that exists."""
    covered = {p: smoke_config(p).get("covered_by") for p in project_dirs()}
    named = {project: node for project, node in covered.items() if node}
    assert named, "no project is left to another test"
    for project, node in named.items():
        path, function = node.split("::")
        assert f"\ndef {function}(" in (ROOT / path).read_text(), (project.name, node)


NOT_AN_INTEGER_ABOVE_0 = ["0", "-1", "2.5", "abc", "inf"]
NOT_A_NUMBER_ABOVE_0 = ["0", "-1e-3", "nan", "inf", "fast"]
NOT_A_BATCH = ["0", "1e3", ""]
# MPS (Apple's GPU) is never available outside macOS; whether CUDA is depends on the machine.
NOT_HERE = ["mps"] if sys.platform != "darwin" else []
# Every parameter of every project's main entry point, with values each project that has it
# must refuse. Paths are relative to the project's folder, where MLflow runs the command.
REFUSED = {
    "epochs": NOT_AN_INTEGER_ABOVE_0,
    "batch_size": NOT_A_BATCH,
    "learning_rate": NOT_A_NUMBER_ABOVE_0,
    "data_dir": ["/no/such/folder"],
    "download": ["maybe", "2"],
    "val_fraction": ["0", "1", "-0.1", "nan"],
    "seed": ["-1", "9" * 23, "1.5", str(2**32)],
    "device": ["tpu", "cudafoo", "cuda:abc", "cuda:", *NOT_HERE],
    "num_workers": ["-1", "33", "1000"],
    "registered_model_name": ["bad/name", "a:b", "x\ty", "100%", ".", "..", "..x", "  ", "x" * 257],
    "resume_from": ["abc", "0" * 31, "G" * 32],
    "alpha": ["-1", "inf", "nan", "abc"],
    "l1_ratio": ["-0.1", "1.5", "nan"],
    "nproc_per_node": ["0", "-1", "1025", "two"],
    "nnodes": ["0", "1025", "1.5"],
    "trials": NOT_AN_INTEGER_ABOVE_0,
    "max_parallel": ["0", "65", "1000"],
    # From projects/mnist-sweep: "" and "." are the sweep itself, ".." has no MLproject.
    "project": ["", ".", "..", "/no/such/folder"],
    "metric": ["", "maximize", "val accuracy?", "../val_accuracy"],
    "goal": ["max", "up", ""],
    "learning_rate_min": NOT_A_NUMBER_ABOVE_0,
    "learning_rate_max": NOT_A_NUMBER_ABOVE_0,
    "batch_size_min": NOT_A_BATCH,
    "batch_size_max": NOT_A_BATCH,
    "epochs_min": NOT_AN_INTEGER_ABOVE_0,
    "epochs_max": NOT_AN_INTEGER_ABOVE_0,
    "trial_params": ["seed", "=7", "'"],
    "env_manager": ["pip", "docker"],
    "backend": ["slurm", ""],
    "backend_config": ["/no/such.json", "MLproject", "conda.yaml"],  # the last two: not JSON
    "build_image": ["maybe", "2"],
    "docker_args": ["'", "=host"],
    "ranking_metric": ["", "test accuracy!"],
}
VALID = {"alpha": "1"}  # a value for each parameter without a default

# How each entry point (the module its MLproject's command runs) checks its arguments, as
# `check(argv)`. mnist_ddp.launch checks its own, then the training's, as its main does before
# it starts torchrun.
CHECKS = {
    "mnist.train": "from mnist.train import parse_args as check",
    "elasticnet.train": "from elasticnet.train import parse_args as check",
    "mnist_sweep.sweep": "from mnist_sweep.sweep import parse_args as check",
    "mnist_ddp.launch": (
        "from mnist_ddp import launch\n"
        "def check(argv):\n"
        "    _, training = launch.parse_args(argv)\n"
        "    launch.train.parse_args(training, prog=launch.PROG)\n"
    ),
}
# Runs `check` on each argv read from stdin; prints [exit status, stderr] of each.
CHECK_EACH = """
import contextlib, io, json, sys
{check}
results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            check(argv)
        status = 0
    except SystemExit as exc:
        status = exc.code
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def entry_argv(entry: EntryPoint, overrides: dict[str, str]) -> list[str]:
    """The argv of the entry point, rendered by MLflow's own code."""
    values = {k: VALID.get(k, p.default) for k, p in entry.parameters.items()} | overrides
    return shlex.split(entry.compute_command(values, storage_dir=None))[3:]  # after python -m X


def checked_in(project: Path, check: str, argvs: list[list[str]]) -> list[tuple[int, str]]:
    """[exit status, stderr] of ``check`` on each argv, in the project's folder, where its
    packages are importable (through its links) as `mlflow run` imports them."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK_EACH.format(check=check)],
        input=json.dumps(argvs),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(item) for item in json.loads(result.stdout)]


@pytest.mark.parametrize("project", project_dirs(), ids=lambda project: project.name)
def test_every_parameter_refuses_its_bad_values_in_one_line(project: Path) -> None:
    """Each bad value stops the entry point before any work: exit 2, one line naming it."""
    entry = load_project(str(project)).get_entry_point("main")
    missing = set(entry.parameters) - set(REFUSED)
    assert not missing, f"no bad values listed for {missing}"
    module = shlex.split(entry.command)[2]
    assert module in CHECKS, f"{project.name} runs {module}: say in CHECKS how it checks"
    cases = [(name, value) for name in entry.parameters for value in REFUSED[name]]
    argvs = [entry_argv(entry, {name: value}) for name, value in cases]
    *refused, defaults = checked_in(project, CHECKS[module], [*argvs, entry_argv(entry, {})])
    assert defaults == (0, ""), f"the MLproject's defaults are refused: {defaults}"
    for (name, value), (status, err) in zip(cases, refused, strict=True):
        assert status == 2, (name, value, status, err)
        assert err.count("\n") == 1 and repr(value) in err, (name, value, err)


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("aZ09_-. /:%\t\\"), max_size=6) | st.text(max_size=300))
def test_a_model_name_accepted_up_front_is_one_the_registry_takes(text: str) -> None:
    """What project_tools.cli.model_name accepts, MLflow's registry stores accept too (the
    file store's check is the stricter one; PostgreSQL holds 256 characters), so registering
    never fails on the name after training."""
    from mlflow.store.model_registry.file_store import _validate_model_name

    try:
        accepted = model_name(text)
    except argparse.ArgumentTypeError:
        return
    if accepted:  # "" means "do not register"
        _validate_model_name(accepted)
        assert len(accepted) <= MAX_MODEL_NAME
