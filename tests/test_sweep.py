"""Hyperparameter sweeps: projects/mnist-sweep, whose trials are MLflow project runs nested
under the sweep's run (locally, in Docker, as Kubernetes Jobs).

The MNIST sweep and the Ctrl-C case run `mlflow run projects/mnist-sweep` as a user does; the
MNIST one trains for real (tiny trials). The other cases run the sweep's main in this process
over a stand-in trial project that takes a second (tests/helpers/sweeps.py); their trials are
`mlflow run` processes all the same. The Kubernetes case renders each trial's Job with MLflow's
own code, as tests/test_kubernetes.py does, with a stand-in for the cluster.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import KUBERNETES_VERSION, PROJECTS
from mlflow_project_store.ready_for_mlflow.servers import TrackingServer
from mnist_sweep import sweep
from tests.helpers.cluster import container_of, job_cluster
from tests.helpers.commands import assert_one_line_error
from tests.helpers.components import remove_images, require_docker_image
from tests.helpers.sweeps import (
    PARENT_TAG,
    SWEEP_PROJECT,
    interrupted_sweep,
    pid_alive,
    run_sweep,
    stand_in_project,
    stand_in_score,
    sweep_error,
    sweep_here,
    sweep_runs,
)

# One-epoch trials of projects/mnist-conda, seconds each.
TINY = {
    "epochs_max": 1,
    "batch_size_min": 128,
    "batch_size_max": 256,
    "learning_rate_min": 1e-3,
    "learning_rate_max": 5e-3,
    "trial_params": "seed=7",
}


def most_at_once(runs: list[Run]) -> int:
    """The most of ``runs`` that were running at the same moment, from their start and end
    times (at the same millisecond, an end comes before a start)."""
    changes = sorted(
        [(run.info.start_time, 1) for run in runs] + [(run.info.end_time, -1) for run in runs]
    )
    running = most = 0
    for _, change in changes:
        running += change
        most = max(most, running)
    return most


@pytest.mark.slow
def test_sweep_of_tiny_mnist_trials(tracking_uri: str, tmp_path: Path) -> None:
    """3 trials, 2 at a time: 3 FINISHED children under one parent that records the best one,
    whose model becomes the `candidate` version. Their runs' times show 2 running at once,
    never more."""
    params = {"trials": 3, "max_parallel": 2, "registered_model_name": "sweep-mnist", **TINY}
    result = run_sweep(tracking_uri, "sweep", params, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sweep_runs(tracking_uri, "sweep")
    parent, children = runs.parent, runs.children
    assert parent.info.status == "FINISHED"
    assert len(children) == 3
    assert {child.info.status for child in children} == {"FINISHED"}
    assert {child.info.run_name for child in children} == {f"trial-{n}" for n in range(3)}
    assert most_at_once(children) == params["max_parallel"]

    # The trial the parent names has the best metric (tiny trials can tie: any of them will do).
    (best,) = [child for child in children if child.info.run_id == parent.data.tags["best_run_id"]]
    top = max(child.data.metrics["val_accuracy"] for child in children)
    assert best.data.metrics["val_accuracy"] == top
    assert parent.data.metrics["best_val_accuracy"] == top
    for name in ("learning_rate", "batch_size", "epochs"):
        assert float(parent.data.params[f"best_{name}"]) == float(best.data.params[name])
    assert parent.data.metrics["trials_finished"] == 3

    client = MlflowClient(tracking_uri)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"search_history.json", "search_history.png"} <= artifacts
    table = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "search_history.json", str(tmp_path))
        ).read_text()
    )
    history = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [row["trial"] for row in history] == [0, 1, 2]
    assert {row["state"] for row in history} == {"FINISHED"}
    best_artifacts = {item.path for item in client.list_artifacts(best.info.run_id)}
    assert f"{best.info.run_name}.log" in best_artifacts

    candidate = client.get_model_version_by_alias("sweep-mnist", "candidate")
    assert candidate.run_id == best.info.run_id
    assert candidate.tags["ranking_metric"] == "test_accuracy"
    assert float(candidate.tags["val_accuracy"]) == pytest.approx(best.data.metrics["val_accuracy"])
    assert "Registered 'sweep-mnist' version 1 with alias 'candidate'" in result.stderr


def stand_in(tmp_path: Path, behaviour: str, trials: int, parallel: int) -> dict[str, object]:
    """Sweep params over the stand-in project, every trial told ``behaviour``."""
    project = stand_in_project(tmp_path)
    return {
        "project": project,
        "trials": trials,
        "max_parallel": parallel,
        "trial_params": f"behaviour={behaviour}",
    }


@pytest.mark.slow
def test_a_failed_trial_leaves_the_sweep_finished(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert sweep_here(stand_in(tmp_path, "fail-first", 2, 2), tmp_path, monkeypatch) == 0
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FINISHED"
    statuses = sorted(child.info.status for child in runs.children)
    assert statuses == ["FAILED", "FINISHED"]
    (failed,) = [child for child in runs.children if child.info.status == "FAILED"]
    assert "FAILED: stand-in trial: forced failure" in capsys.readouterr().out
    log = MlflowClient(tracking_uri).download_artifacts(
        failed.info.run_id, f"{failed.info.run_name}.log", str(tmp_path)
    )
    assert "forced failure" in Path(log).read_text()
    assert runs.parent.data.metrics["trials_failed"] == 1
    finished = [child for child in runs.children if child.info.status == "FINISHED"]
    best = max(child.data.metrics["val_accuracy"] for child in finished)
    assert runs.parent.data.metrics["best_val_accuracy"] == best


@pytest.mark.slow
def test_the_sweep_fails_only_when_every_trial_failed(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert sweep_here(stand_in(tmp_path, "fail", 2, 2), tmp_path, monkeypatch) == 1
    reason = sweep_error(capsys.readouterr().err)
    assert reason.startswith("mnist_sweep.sweep: error: all 2 trials failed; the first: trial")
    assert reason.endswith("stand-in trial: forced failure")
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FAILED"
    assert [child.info.status for child in runs.children] == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_a_metric_the_trials_do_not_log_stops_the_sweep_after_one_trial(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A misspelled metric: the first trial that finishes without it ends the sweep, FAILED,
    with one line that names the metric and those the trial logged; no other trial starts."""
    params = {**stand_in(tmp_path, "finish", 3, 1), "metric": "val_acuracy"}
    result = run_sweep(tracking_uri, "sweep", params, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = sweep_error(result.stderr)
    assert "trial 0 (run " in line and "finished without metric 'val_acuracy'" in line, line
    assert line.endswith("expected one of the metrics it logged: val_accuracy"), line
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FAILED"
    assert [(run.info.run_name, run.info.status) for run in runs.children] == [
        ("trial-0", "FINISHED")
    ]


@pytest.mark.slow
def test_a_metric_the_trials_do_not_log_stops_the_running_trials(
    tracking_uri: str, tmp_path: Path
) -> None:
    """Two tiny MNIST trials at a time with a misspelled metric: the first to finish ends the
    sweep, FAILED, in one line; the other, still running, is stopped and KILLED as on Ctrl-C,
    and no third trial starts. (Seed 42 gives trial 0 four epochs and trial 1 one: the other
    trial is still running, seconds beyond the sweep's 2 s poll, whichever starts first on a
    busy machine.)"""
    params = {**TINY, "trials": 4, "max_parallel": 2, "epochs_max": 5, "seed": 42}
    result = run_sweep(tracking_uri, "sweep", params | {"metric": "val_acuracy"}, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = sweep_error(result.stderr)
    first = re.search(r"trial ([01]) \(run \w+\) finished without metric 'val_acuracy'", line)
    assert first, line
    assert "logged: test_accuracy, " in line and ", val_accuracy, " in line, line
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FAILED"
    statuses = {run.info.run_name: run.info.status for run in runs.children}
    finished, other = int(first.group(1)), 1 - int(first.group(1))
    assert statuses == {f"trial-{finished}": "FINISHED", f"trial-{other}": "KILLED"}


@pytest.mark.slow
def test_a_trial_param_the_project_does_not_take_is_refused_before_any_trial(
    tracking_uri: str, tmp_path: Path
) -> None:
    """trial_params with a key that mnist-conda's entry point main does not declare: one line
    that names it and the params the entry point takes, the sweep's run FAILED, no trial."""
    params = {**TINY, "trials": 2, "max_parallel": 1, "trial_params": "sed=7 device=cpu"}
    result = run_sweep(tracking_uri, "sweep", params, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    line = sweep_error(result.stderr)
    assert line.startswith(
        "mnist_sweep.sweep: error: trial_params sets 'sed', which entry point 'main' of "
        "project 'mnist-conda' does not take: expected one of data_dir, device, "
    ), line
    assert " seed, " in line and "learning_rate" not in line, line  # not the searched ones
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FAILED"
    assert runs.children == []


def test_a_project_that_does_not_take_a_searched_param_is_refused(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A trial project whose entry point main does not declare epochs, which the search sets:
    refused before any trial, in one line."""
    params = stand_in(tmp_path, "finish", 2, 2)
    mlproject = params["project"] / "MLproject"
    declared = mlproject.read_text()
    mlproject.write_text(declared.replace("      epochs: int\n", ""))
    assert mlproject.read_text() != declared
    assert sweep_here(params, tmp_path, monkeypatch) == 1
    line = sweep_error(capsys.readouterr().err)
    assert line.startswith("mnist_sweep.sweep: error: the search sets 'epochs', which entry"), line
    assert line.endswith(
        "expected a project whose entry point takes learning_rate, batch_size, epochs"
    )
    runs = sweep_runs(tracking_uri, "sweep")
    assert runs.parent.info.status == "FAILED"
    assert runs.children == []


@pytest.mark.slow
def test_ctrl_c_kills_the_trials(tracking_uri: str, tmp_path: Path) -> None:
    params = stand_in(tmp_path, "wait", 4, 2)
    with interrupted_sweep(tracking_uri, "sweep", params, params["project"]) as process:
        output = process.stdout.read()
    assert process.returncode != 0
    assert "the running trials were stopped and marked KILLED" in output, output[-3000:]
    runs = sweep_runs(tracking_uri, "sweep")
    # The sweep ends its run KILLED and then its `mlflow run` (Stopper.end_launcher), before
    # MLflow's own status check would overwrite KILLED with FAILED (docs/upstream.md).
    assert runs.parent.info.status == "KILLED", output[-3000:]
    assert [child.info.status for child in runs.children] == ["KILLED", "KILLED"]
    pids = [int(path.name) for path in (params["project"] / "pids").iterdir()]
    assert not [pid for pid in pids if pid_alive(pid)], "a trial process outlived Ctrl-C"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs-min", "3", "--epochs-max", "2"], "epochs_min 3 is above epochs_max 2"),
        (["--trial-params", "epochs=2"], "trial_params sets epochs, which the search sets"),
        (["--trial-params", "seed"], "expected key=value items, got 'seed'"),
        (["--backend", "slurm"], "expected one of local, kubernetes, got 'slurm'"),
        (["--max-parallel", "0"], "expected an integer between 1 and 64, got '0'"),
        (["--max-parallel", "65"], "expected an integer between 1 and 64, got '65'"),
        (["--project", "/no/such"], "expected an MLflow project: a folder with an MLproject"),
        (["--project", str(PROJECTS)], f"or a Git URI, got {str(PROJECTS)!r}"),
        (["--project", "."], "expected the project each trial runs, not this sweep's own"),
        (["--metric", "maximize"], "a metric the trials log (goal says which way), got 'max"),
        (["--metric", ""], "expected the name of a metric the trials log (letters, digits,"),
        (["--ranking-metric", "test accuracy!"], "a metric the trials log (letters, digits,"),
        (["--backend-config", "/no/such.json"], "cannot read '/no/such.json': No such file"),
        (["--backend-config", "MLproject"], "expected a JSON file, got 'MLproject': Expecting"),
        (["--docker-args", "=host"], "expected name=value or name items, got '=host'"),
        (["--registered-model-name", ".."], "a model name other than '.' that does not start"),
    ],
)
def test_bad_values_are_one_line(
    argv: list[str], message: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the sweep's folder, where `mlflow run` starts it (the default project is relative)."""
    monkeypatch.chdir(SWEEP_PROJECT)
    assert_one_line_error(sweep.parse_args, argv, message, lambda: capsys.readouterr().err)


@pytest.mark.docker
@pytest.mark.slow
def test_kubernetes_trials_are_jobs_that_the_cluster_runs(
    tracking_server: TrackingServer,
    registry: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """backend kubernetes with build_image, on the stand-in cluster of tests/helpers/cluster.py
    (no cluster can run here: its Job API, and a kubelet that runs each pod in Docker): one
    image built and pushed before the trials; each trial a Job that MLflow renders from the
    trial project's template, whose pod pulls that image by digest and logs its own metric
    into the tracking server; the sweep ranks them by it."""
    require_docker_image(PROJECTS / "elasticnet-docker")  # the stand-in's base: it has mlflow
    project = stand_in_project(tmp_path, "docker")
    config = json.loads((project / "kubernetes_config.json").read_text())
    config["repository-uri"] = f"{registry}/stand-in-trial"
    (tmp_path / "kubernetes_config.json").write_text(json.dumps(config))
    params = {
        "project": project,
        "backend": "kubernetes",
        "backend_config": tmp_path / "kubernetes_config.json",
        "build_image": "true",
        "trials": 3,
        "max_parallel": 2,
    }
    with job_cluster(tmp_path) as (cluster, kubeconfig):
        # In a process of its own: the kubernetes client reads KUBECONFIG when it is imported.
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        try:
            result = run_sweep(tracking_server.url, "sweep", params, tmp_path)
        finally:  # the image built for the stand-in project, not needed again
            remove_images(f"{registry}/stand-in-trial")
        jobs = list(cluster.jobs.values())
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sweep_runs(tracking_server.url, "sweep")
    assert runs.parent.info.status == "FINISHED"
    assert len(runs.children) == 3 and len(jobs) == 3
    images = {container_of(job.manifest)["image"] for job in jobs}
    assert len(images) == 1, images  # built and pushed once, before the trials
    (image,) = images
    assert image.startswith(f"{registry}/stand-in-trial") and "@sha256:" in image
    children = {child.info.run_id: child for child in runs.children}
    for job in jobs:
        kubernetes_validate.validate(job.manifest, KUBERNETES_VERSION, strict=True)
        env = {e["name"]: e.get("value") for e in container_of(job.manifest)["env"]}
        child = children[env["MLFLOW_RUN_ID"]]
        assert child.data.tags[PARENT_TAG] == runs.parent.info.run_id
        assert child.info.status == "FINISHED"
        # The pod computed it (trial.py), from the learning rate the sweep gave the trial.
        expected = stand_in_score(float(child.data.params["learning_rate"]))
        assert child.data.metrics["val_accuracy"] == pytest.approx(expected)
    best = max(runs.children, key=lambda child: child.data.metrics["val_accuracy"])
    assert runs.parent.data.tags["best_run_id"] == best.info.run_id
    assert runs.parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]


@pytest.mark.uv
def test_uv_environment_is_built_once_before_the_trials(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """env_manager uv: the sweep builds the trial project's environment where `mlflow run`
    looks for it, before any trial; each trial's `mlflow run` then finds it there."""
    envs = tmp_path / "envs"
    monkeypatch.setenv("MLFLOW_ENV_ROOT", str(envs))
    project = stand_in_project(tmp_path, "uv")
    params = {"project": project, "env_manager": "uv", "trials": 2, "max_parallel": 2}
    assert sweep_here(params, tmp_path, monkeypatch) == 0
    assert capsys.readouterr().out.count("Building the uv environment of") == 1
    assert len(list(envs.iterdir())) == 1
    runs = sweep_runs(tracking_uri, "sweep")
    client = MlflowClient(tracking_uri)
    for child in runs.children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.project.env"] == "uv"
        log = client.download_artifacts(
            child.info.run_id, f"{child.info.run_name}.log", str(tmp_path)
        )
        assert "already exists" in Path(log).read_text()  # MLflow's words for "not rebuilt"


@pytest.mark.docker
def test_docker_trials_share_one_image_built_before_them(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """build_image: the image (the project on its docker_env image) is built once, for the
    sweep's run, and every trial runs in it. The stand-in project runs on the scikit-learn
    dependency image, which has mlflow."""
    require_docker_image(PROJECTS / "elasticnet-docker")
    project = stand_in_project(tmp_path, "docker")
    mlruns = tmp_path / "mlruns"  # MLflow's Docker backend mounts only the run's own folder
    params = {
        "project": project,
        "build_image": "true",
        "docker_args": f"network=host v={mlruns}:{mlruns} user={os.getuid()}:{os.getgid()}",
        "trials": 2,
        "max_parallel": 2,
    }
    try:
        assert sweep_here(params, tmp_path, monkeypatch) == 0
    finally:  # the image built for the stand-in project, not needed again
        remove_images("stand-in-trial")
    assert capsys.readouterr().out.count("Building the image of") == 1
    runs = sweep_runs(tracking_uri, "sweep")
    image = runs.parent.data.tags["mlflow.docker.image.uri"]
    assert image.startswith("stand-in-trial")
    assert [child.info.status for child in runs.children] == ["FINISHED", "FINISHED"]
    for child in runs.children:
        assert child.data.tags["mlflow.docker.image.uri"] == image
        assert child.data.tags["mlflow.project.env"] == "docker"
        assert child.data.tags["mlflow.source.name"] == str(project)
        assert "val_accuracy" in child.data.metrics
