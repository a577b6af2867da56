"""The container path: dependency-only Dockerfiles, pins that agree, no secret in any image or
committed file. Nothing lost and nothing leaked: a model that the container would lose stops
the run before training, the dependency image run without --build-image says so, the store's
`store-docker` backend keeps credential files out of the image (.dockerignore) and credential
values out of every process's arguments and of what it prints, and the images run as a
non-root user."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS, ROOT
from mlflow_project_store.ready_for_mlflow.servers import HOST, S3, free_port
from tests.helpers.commands import make, mlflow_run, one_line_reason, only_run
from tests.helpers.components import require_docker_image
from tests.helpers.credentials import (
    aws_key_shapes,
    command_lines,
    fake_credentials,
    leaked,
    with_password,
)
from tests.helpers.projects import project_dirs, smoke_config

PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==([^\s\\]+)", re.MULTILINE)
DOCKER_PROJECTS = [
    p for p in project_dirs() if "docker_env" in yaml.safe_load((p / "MLproject").read_text())
]
ELASTICNET = PROJECTS / "elasticnet-docker"
BUILD_IMAGE = ["--build-image", "-A", "network=host"]
STORE_DOCKER = ["--backend", "store-docker", *BUILD_IMAGE]
# The container writes a local store as its owner (the images run as uid 1000).
AS_OWNER = ["-A", f"user={os.getuid()}:{os.getgid()}"]
MLFLOW_ERROR = "ERROR mlflow.cli: === "


def pins(text: str) -> dict[str, str]:
    return {name.split("[")[0].lower(): version for name, version in PIN.findall(text)}


def mlflow_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line `mlflow run` ends with when the backend refuses (no traceback)."""
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if MLFLOW_ERROR in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0].split(MLFLOW_ERROR, 1)[1]


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_dockerfile_holds_dependencies_only(project: Path) -> None:
    text = (project / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE}" in text
    assert not re.search(r"^\s*(COPY|ADD)\b", text, re.MULTILINE), "code arrives by --build-image"
    assert not re.search(r"^\s*ENV\s+AWS_", text, re.MULTILINE), "credentials arrive at run time"


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_container_pins_agree_with_the_repository(project: Path) -> None:
    repository = pins((ROOT / "requirements.txt").read_text())
    image = pins((project / "Dockerfile").read_text())
    assert image, "the Dockerfile pins nothing"
    for name, version in image.items():
        assert repository.get(name, version) == version, f"{name}=={version} vs requirements.txt"


def test_conda_env_pins_agree_with_the_repository() -> None:
    repository = pins((ROOT / "requirements.txt").read_text())
    for conda in PROJECTS.glob("*/conda.yaml"):
        for name, version in pins(conda.read_text()).items():
            assert repository.get(name, version) == version, f"{conda}: {name}=={version}"


def test_no_secret_in_the_repository() -> None:
    """Tracked files and untracked ones that git does not ignore (.env is ignored)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        path = ROOT / name
        if path.is_file() and not path.is_symlink() and path.suffix not in (".gz", ".png"):
            assert not aws_key_shapes(path.read_text(errors="ignore")), f"{name} holds an AWS key"


def image_secrets(image: str) -> list[str]:
    """AWS-shaped keys in ``image``'s build history and environment, and its AWS_ variables."""
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    each_line = "{{range .Config.Env}}{{println .}}{{end}}"
    environment = docker("image", "inspect", "--format", each_line, image)
    names = [line.split("=", 1)[0] for line in environment.splitlines() if line.startswith("AWS_")]
    return aws_key_shapes(history) + aws_key_shapes(environment) + names


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.docker
@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_no_secret_in_image_history_or_environment(project: Path) -> None:
    assert image_secrets(require_docker_image(project)) == []


@pytest.mark.docker
def test_image_scan_finds_planted_fake_keys(tmp_path: Path) -> None:
    """The scan above can fail: an image with the suite's fake keys in a build step and in its
    environment is caught on each."""
    base = require_docker_image(ELASTICNET)
    keys = fake_credentials()
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\n"
        f"RUN echo {keys['AWS_ACCESS_KEY_ID']} > /dev/null\n"
        f"ENV AWS_SECRET_ACCESS_KEY={keys['AWS_SECRET_ACCESS_KEY']}\n"
    )
    image = f"mlflow-store/planted-keys:{tmp_path.name.lower()}"
    docker("build", "--quiet", "--tag", image, str(tmp_path))
    try:
        found = image_secrets(image)
    finally:
        docker("rmi", image)
    assert keys["AWS_ACCESS_KEY_ID"] in found
    assert f"AWS_SECRET_ACCESS_KEY={keys['AWS_SECRET_ACCESS_KEY']}" in found
    assert "AWS_SECRET_ACCESS_KEY" in found


def test_store_docker_without_daemon_fails_fast(tmp_path: Path) -> None:
    result = make("run-docker", DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert "no Docker daemon answers" in mlflow_error(result)


@pytest.mark.docker
def test_model_the_container_would_lose_stops_the_run(tracking_uri: str, tmp_path: Path) -> None:
    """From an empty folder with the local store and no mount (MLflow's own backend): one
    line before training, the run FAILED."""
    require_docker_image(ELASTICNET)
    params = smoke_config(ELASTICNET)["parameters"]
    result = mlflow_run(ELASTICNET, tracking_uri, params, extra_args=BUILD_IMAGE, cwd=tmp_path)
    reason = one_line_reason(result, "elasticnet.train: error:")
    assert "the model would be lost" in reason and "-A v=" in reason, reason
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert not run.data.metrics, "it trained before stopping"


@pytest.mark.docker
def test_a_store_the_container_cannot_write_is_one_line(tracking_uri: str, tmp_path: Path) -> None:
    """The image's user is not the owner of the store: one line naming -A user=."""
    require_docker_image(ELASTICNET)
    if os.getuid() == 1000:
        pytest.skip("this user is the image's uid 1000: the store is writable")
    mount = ["-A", f"v={tmp_path / 'mlruns'}:{tmp_path / 'mlruns'}"]
    args = [*BUILD_IMAGE, *mount]
    result = mlflow_run(ELASTICNET, tracking_uri, {"alpha": 0.5}, extra_args=args, cwd=tmp_path)
    reason = one_line_reason(result, "elasticnet.train: error:")
    assert "not writable" in reason and "-A user=$(id -u):$(id -g)" in reason, reason


@pytest.mark.docker
def test_without_build_image_says_how(tracking_uri: str, tmp_path: Path) -> None:
    """The dependency image alone holds no code: store-docker says so in one line, and the
    run is FAILED, not left RUNNING."""
    require_docker_image(ELASTICNET)
    args = ["--backend", "store-docker"]
    result = mlflow_run(ELASTICNET, tracking_uri, {"alpha": 0.5}, extra_args=args, cwd=tmp_path)
    assert "run with --build-image" in mlflow_error(result)
    assert only_run(tracking_uri).info.status == "FAILED"


@pytest.mark.docker
@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(project: Path) -> None:
    image = require_docker_image(project)
    user = subprocess.run(
        ["docker", "run", "--rm", image, "id", "-u"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert user.isdigit() and int(user) != 0, user


# --- Credentials ---------------------------------------------------------------------------


def test_the_only_mlflow_plugins_are_the_two_backends() -> None:
    """This repository adds to MLflow only what a `--backend` asks for: two entry points of
    the project-backend group, each an AbstractBackend; no plugin that every process loads."""
    ours = importlib.metadata.distribution("mlflow-project-store").entry_points
    groups = {(e.group, e.name) for e in ours}
    assert groups == {
        ("mlflow.project_backend", "store-docker"),
        ("mlflow.project_backend", "store-kubernetes"),
    }
    for entry in ours:
        assert issubclass(entry.load(), AbstractBackend), entry.value


@pytest.mark.docker
@pytest.mark.server
def test_make_run_docker_passes_credentials_by_name_only(
    tracking_uri: str, tmp_path: Path, s3: S3
) -> None:
    """An s3:// artifact root: the keys must reach the container (the model is in S3). With
    `make run-docker` (store-docker) no value is in any process's arguments while it runs (MLflow's
    own backend puts `-e NAME=value` there), nor in what it prints, nor in a file of the run."""
    require_docker_image(ELASTICNET)
    prefix = f"leak-{tmp_path.name}"
    MlflowClient(tracking_uri).create_experiment("tests", f"s3://{s3.bucket}/{prefix}")
    keys = fake_credentials()
    env = {**os.environ, **keys, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    command = [
        "make",
        "--no-print-directory",
        "run-docker",
        f"TRACKING_URI={tracking_uri}",
        f"DOCKER_PROJECT={ELASTICNET}",
        "RUN_ARGS=-P alpha=0.5",
    ]
    env |= {"MLFLOW_EXPERIMENT_NAME": "tests", "AWS_DEFAULT_REGION": "us-east-1"}
    seen: list[bytes] = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            seen += command_lines()
            time.sleep(0.2)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    assert any(b"docker\0run" in line for line in seen), "the docker client was not seen"
    assert any(key.endswith("MLmodel") for key in s3.object_keys(prefix)), "no model in S3"
    files = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert leaked(keys, out, err, *seen, *files) == []


@pytest.mark.docker
def test_dockerignore_keeps_credential_files_out_of_the_image(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A copy of elasticnet-docker with the suite's fake keys in a .env, a token in
    .git/config, a `credentials` file, a kubeconfig, a .pgpass and a key file: the store-docker
    build honours its .dockerignore, the run finishes, and the image holds none of them
    (MLflow's own build would copy the whole folder)."""
    require_docker_image(ELASTICNET)
    project = tmp_path / "elasticnet-docker"
    shutil.copytree(ELASTICNET, project, symlinks=False)  # links followed, as MLflow does
    keys = fake_credentials()
    planted = {
        ".env": f"AWS_SECRET_ACCESS_KEY={keys['AWS_SECRET_ACCESS_KEY']}",
        ".git/config": f"[http]\n\textraheader = token {keys['MLFLOW_TRACKING_PASSWORD']}",
        "credentials": f"[default]\naws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}",
        "conf/kubeconfig": f"users:\n- user:\n    token: {keys['MLFLOW_TRACKING_PASSWORD']}",
        ".pgpass": f"db:5432:mlflow:mlflow:{keys['AWS_SECRET_ACCESS_KEY']}",
        "deploy.pem": keys["AWS_ACCESS_KEY_ID"],
    }
    for name, text in planted.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text + "\n")
    args = [*STORE_DOCKER, *AS_OWNER, "-A", f"v={tmp_path / 'mlruns'}:{tmp_path / 'mlruns'}"]
    result = mlflow_run(project, tracking_uri, {"alpha": 0.5}, extra_args=args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    image = only_run(tracking_uri).data.tags["mlflow.docker.image.uri"]
    listing = subprocess.run(
        ["docker", "run", "--rm", image, "find", "/mlflow/projects/code"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "/mlflow/projects/code/elasticnet/train.py" in listing
    for name in planted:
        assert f"/mlflow/projects/code/{name}" not in listing, name
    content = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            image,
            "find",
            "/mlflow/projects/code",
            "-type",
            "f",
            "-exec",
            "cat",
            "{}",
            "+",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert leaked(keys, content, result.stdout, result.stderr) == []
    assert aws_key_shapes(content.decode(errors="replace")) == []
    subprocess.run(["docker", "rmi", image], capture_output=True, check=False)


def test_make_run_masks_the_password_of_a_tracking_server_that_is_down() -> None:
    """`make run` on http://alice:<password>@<closed port>: within 30 s, one line naming the
    URI with its password masked; the password is in nothing it prints."""
    password = f"fake-uri-password-{free_port()}x"
    down = f"http://{HOST}:{free_port()}"
    started = time.monotonic()
    result = make("run", f"TRACKING_URI={with_password(down, password)}", "RUN_ARGS=-P epochs=1")
    assert time.monotonic() - started < 30
    masked = with_password(down, "***")
    reason = one_line_reason(result, "make run: error:")
    assert f"tracking server {masked} did not answer" in reason, reason
    assert f"Tracking store: {masked}" in result.stdout, result.stdout
    assert leaked({"uri password": password}, result.stdout, result.stderr) == []


def test_gitignore_keeps_credential_files_out_and_templates_in() -> None:
    def ignored(name: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False)
        return check.returncode == 0

    for name in (".env", "projects/x/.env", ".env.prod", "prod.env", "basic_auth.ini"):
        assert ignored(name), name
    assert ignored("ready_for_mlflow/deploy/secrets-prod.yaml")
    assert not ignored("ready_for_mlflow/deploy/secrets.example.yaml")
    assert not ignored("ready_for_mlflow/.env.example")
