"""`make reproduce`: a run made from the store's git server, run again from its commit with the
same parameters, gives the same final metrics; a run that cannot be re-created from a commit is
refused in one line, with real runs of each kind. The git server is `git daemon` serving a
bare clone of this repository's committed HEAD (tests/helpers/outside.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlflow_project_store.ready_for_mlflow.servers import TrackingServer
from tests.helpers.commands import make, mlflow_run, one_line_reason, only_run
from tests.helpers.components import require_docker_image
from tests.helpers.load import write_subset
from tests.helpers.outside import GitStore
from tests.helpers.sweeps import stand_in_project

REPRODUCES = "reproduces"
ONE_EPOCH = {"epochs": 1, "batch_size": 128, "seed": 7}


def reproduce(run: str, tracking_uri: str) -> subprocess.CompletedProcess[str]:
    return make("reproduce", f"RUN={run}", f"TRACKING_URI={tracking_uri}", timeout=900)


def the_copy(client: MlflowClient, original: str) -> mlflow.entities.Run:
    """The run that `make reproduce` made of ``original``."""
    experiment = client.get_run(original).info.experiment_id
    (found,) = client.search_runs([experiment], f"tags.{REPRODUCES} = '{original}'")
    return found


def assert_reproduced(result: subprocess.CompletedProcess[str], tracking_uri: str, original: str):
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    client = MlflowClient(tracking_uri)
    copy = the_copy(client, original)
    assert f"Identical: every final metric of run {copy.info.run_id}" in result.stdout
    before = client.get_run(original)
    assert copy.info.status == "FINISHED"
    assert (
        copy.data.tags["mlflow.source.git.commit"] == before.data.tags["mlflow.source.git.commit"]
    )
    for key, value in copy.data.params.items():
        if key in before.data.params:
            assert before.data.params[key] == value, key
    return before, copy


@pytest.mark.slow
def test_a_sweep_trial_registered_as_a_model_is_reproduced_exactly(
    git_store: GitStore, tracking_uri: str, tmp_path: Path
) -> None:
    """The sweep, run from the store's git URL at a commit: its one trial (a run of the
    mnist-conda the sweep holds) becomes version 1 of `repro`. `make reproduce
    RUN=models:/repro@candidate` runs that trial again from the commit: FINISHED, the same
    parameters, every final metric identical (CPU, the same seed)."""
    params = {
        "trials": 1,
        "max_parallel": 1,
        "epochs_max": 1,
        "batch_size_min": 128,
        "batch_size_max": 128,
        "trial_params": "seed=7",
        "registered_model_name": "repro",
    }
    uri = f"{git_store.url}#projects/mnist-sweep"
    args = ["--version", git_store.commit]
    made = mlflow_run(uri, tracking_uri, params, extra_args=args, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    trial = MlflowClient(tracking_uri).get_model_version_by_alias("repro", "candidate").run_id
    result = reproduce("models:/repro@candidate", tracking_uri)
    before, copy = assert_reproduced(result, tracking_uri, trial)
    # The trial project is the sweep's link to mnist-conda: the clone at the commit holds it too.
    source = f"{git_store.url}#projects/mnist-sweep/mnist-conda"
    assert copy.data.tags["mlflow.source.name"] == source
    assert copy.data.metrics["test_accuracy"] == before.data.metrics["test_accuracy"] > 0.8


@pytest.mark.slow
@pytest.mark.uv
def test_a_uv_run_is_reproduced_in_its_own_environment(
    git_store: GitStore, tracking_uri: str, tmp_path: Path
) -> None:
    """A project run with `--env-manager uv` from the git URL is run again with uv."""
    uri = f"{git_store.url}#tests/projects/stand-in-trial-uv"
    params = {"learning_rate": 0.001, "batch_size": 32, "epochs": 1}
    args = ["--version", git_store.commit]
    made = mlflow_run(uri, tracking_uri, params, "uv", extra_args=args, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    original = only_run(tracking_uri).info.run_id
    _, copy = assert_reproduced(reproduce(original, tracking_uri), tracking_uri, original)
    assert copy.data.tags["mlflow.project.env"] == "uv"


@pytest.mark.docker
@pytest.mark.slow
def test_a_docker_run_is_reproduced_in_docker(
    git_store: GitStore, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """elasticnet-docker run with `--backend store-docker --build-image` from the git URL (a
    tracking server: no mount needed) is run again the same way."""
    require_docker_image(Path("projects/elasticnet-docker"))
    uri = f"{git_store.url}#projects/elasticnet-docker"
    args = ["--version", git_store.commit, "--backend", "store-docker", "--build-image"]
    args += ["-A", "network=host"]
    made = mlflow_run(
        uri, tracking_server.url, {"alpha": 0.01}, extra_args=args, cwd=tmp_path, experiment="d"
    )
    assert made.returncode == 0, made.stderr[-3000:]
    original = only_run(tracking_server.url, "d").info.run_id
    result = reproduce(original, tracking_server.url)
    before, copy = assert_reproduced(result, tracking_server.url, original)
    assert copy.data.tags["mlflow.project.env"] == "docker"
    assert copy.data.metrics["rmse"] == before.data.metrics["rmse"]


def clone_of(git_store: GitStore, folder: Path) -> Path:
    subprocess.run(["git", "clone", "-q", git_store.url, str(folder)], check=True)
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):
        subprocess.run(["git", "-C", str(folder), "config", key, value], check=True)
    return folder


@pytest.mark.slow
def test_runs_that_a_commit_cannot_re_create_are_refused_in_one_line(
    git_store: GitStore, tracking_uri: str, tmp_path: Path
) -> None:
    """Real runs of each kind, each refused before anything runs, in one line, exit 2: one not
    made by `mlflow run`; one of a folder outside git (no commit); one of a clone with an
    uncommitted change; one of a commit only the clone has (its remote cannot give it)."""
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run() as by_hand:
            mlflow.log_metric("x", 1.0)
    finally:
        mlflow.set_tracking_uri(None)
    trial = {"learning_rate": 0.001, "batch_size": 32, "epochs": 1}
    outside_git = mlflow_run(
        stand_in_project(tmp_path), tracking_uri, trial, cwd=tmp_path, experiment="plain"
    )
    assert outside_git.returncode == 0, outside_git.stderr[-3000:]
    no_commit = only_run(tracking_uri, "plain").info.run_id

    clone = clone_of(git_store, tmp_path / "clone")
    (clone / "README.md").write_text("changed\n")
    digits = write_subset(tmp_path / "digits", train=640, test=200)
    dirty = mlflow_run(
        clone / "projects" / "mnist-conda",
        tracking_uri,
        ONE_EPOCH | {"data_dir": digits},
        cwd=tmp_path,
        experiment="dirty",
    )
    assert dirty.returncode == 0, dirty.stderr[-3000:]
    dirty_run = only_run(tracking_uri, "dirty")
    assert dirty_run.data.tags["mlflow.source.git.dirty"] == "true"

    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "not pushed"], check=True)
    unpushed = mlflow_run(
        clone / "tests" / "projects" / "stand-in-trial",
        tracking_uri,
        trial,
        cwd=tmp_path,
        experiment="unpushed",
    )
    assert unpushed.returncode == 0, unpushed.stderr[-3000:]
    unpushed_run = only_run(tracking_uri, "unpushed").info.run_id

    cases = {
        by_hand.info.run_id: "was not made by `mlflow run`",
        no_commit: "records no git commit",
        dirty_run.info.run_id: "was made from a tree with uncommitted changes",
        unpushed_run: f"of {git_store.url} cannot be fetched",
    }
    for run_id, words in cases.items():
        result = reproduce(run_id, tracking_uri)
        assert result.returncode == 2, (words, result.stderr[-2000:])
        assert words in one_line_reason(result, "reproduce: error:"), words
    every = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(every) == 4, "a refused run was run again"
