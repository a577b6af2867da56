"""Every project under projects/: taken out of the repository and run there, and every
parameter of every entry point refusing bad values in one line.

A project is exported (`make export`) and run from another folder by a launcher that holds only
mlflow and uv, in the environment the project declares: its conda.yaml through
`--env-manager uv`, its Dockerfile's image through MLflow's own `--build-image`. It is also run
straight from the store's git URL with a subdirectory and a commit, as a team that does not
clone the store runs it. Projects are discovered, not listed: a new folder with an MLproject
and a smoke.yaml is tested without editing this file (a new parameter name needs its bad values
in REFUSED).
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

from mlflow_project_store.layout import PROJECTS
from project_tools.cli import MAX_MODEL_NAME, model_name
from tests.helpers.commands import only_run
from tests.helpers.outside import GitStore
from tests.helpers.projects import (
    assert_smoke_run,
    build_dependency_image,
    export,
    project_dirs,
    run_alone,
    smoke_config,
    smoke_params,
)


def test_projects_are_found() -> None:
    assert PROJECTS / "mnist-conda" in project_dirs()


def reaches_outside(folder: Path) -> list[str]:
    """What in an exported ``folder`` would need the repository: a link, a Kubernetes config
    whose Job template is not in the folder, an MLproject default naming a path outside it."""
    found = [f"link {p}" for p in folder.rglob("*") if p.is_symlink()]
    for config in folder.glob("kubernetes*_config.json"):
        template = folder / json.loads(config.read_text())["kube-job-template-path"]
        if not template.is_file() or template.parent != folder:
            found.append(f"{config.name}: {template}")
    for entry in load_project(str(folder))._entry_points.values():
        for name, param in entry.parameters.items():
            default = str(param.default)
            if default.startswith(("../", "/")) and (folder / default).exists():
                found.append(f"MLproject: {name} defaults to {default}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("project", smoke_params())
def test_exported_copy_runs_alone(
    project: Path, launcher: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """`make export`, then `mlflow run` of the copy from another folder, with only what the
    project declares: the run FINISHED with its params and metrics, its model predicts."""
    copy = export(project, tmp_path / "exported" / project.name)
    assert reaches_outside(copy) == []
    config = smoke_config(copy)
    run_args = config.get("run_args", [])
    if "--build-image" in run_args:
        build_dependency_image(copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_alone(copy, launcher, tracking_uri, elsewhere, config["parameters"], run_args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(copy, tracking_uri)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("project", "env_manager"),
    [
        ("mnist-conda", "local"),
        pytest.param("elasticnet-docker", None, marks=pytest.mark.docker),
    ],
)
def test_runs_from_the_store_git_url(
    project: str,
    env_manager: str | None,
    git_store: GitStore,
    launcher: Path,
    tracking_uri: str,
    tmp_path: Path,
) -> None:
    """`mlflow run git://.../store.git#projects/<name> --version <commit>`: MLflow clones the
    store at that commit and runs the subdirectory, its links inside the clone. Locally in the
    launcher's environment (mnist-conda's dependencies, through the repository's venv: the
    launcher holds mlflow only, so `local` uses this test's Python), and in Docker."""
    config = smoke_config(PROJECTS / project)
    run_args = ["--version", git_store.commit, *config.get("run_args", [])]
    if "--build-image" in run_args:
        build_dependency_image(PROJECTS / project)
    uri = f"{git_store.url}#projects/{project}"
    bin_dir = launcher if env_manager is None else Path(sys.executable).parent
    result = run_alone(
        uri, bin_dir, tracking_uri, tmp_path, config["parameters"], run_args, env_manager
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == git_store.commit
    assert run.data.tags["mlflow.source.name"] == uri
    assert set(config["metrics"]) <= set(run.data.metrics)


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
# `check(argv)`. mnist.distributed.launch checks its own, then the training's, as its main does
# before it starts torchrun.
CHECKS = {
    "mnist.train": "from mnist.train import parse_args as check",
    "elasticnet.train": "from elasticnet.train import parse_args as check",
    "mnist_sweep.sweep": "from mnist_sweep.sweep import parse_args as check",
    "mnist.distributed.launch": (
        "from mnist.distributed import launch\n"
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


ENTRY_POINTS = [
    pytest.param(project, entry, id=f"{project.name}-{entry}")
    for project in project_dirs()
    for entry in load_project(str(project))._entry_points
]


@pytest.mark.parametrize(("project", "entry_point"), ENTRY_POINTS)
def test_every_parameter_refuses_its_bad_values_in_one_line(
    project: Path, entry_point: str
) -> None:
    """Each bad value stops the entry point before any work: exit 2, one line naming it."""
    entry = load_project(str(project)).get_entry_point(entry_point)
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
