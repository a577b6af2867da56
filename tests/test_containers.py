"""The container path: dependency-only Dockerfiles, pins that agree, no secret in any image or
committed file, and `make run-docker` failing fast without a Docker engine. Nothing lost and
nothing leaked: a model that the container would lose stops the run before training, the image
run without --build-image says so, no credential value reaches the output or an image (nor
the password of a tracking URI what make prints), and the images run as a non-root user."""

from __future__ import annotations

import importlib.metadata
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ready_for_mlflow.servers import HOST, S3, TrackingServer, free_port
from scaffold.layout import PROJECTS, ROOT
from tests.helpers.commands import make, mlflow_run, one_line_reason, only_run
from tests.helpers.components import docker_image, require_docker, require_docker_image
from tests.helpers.heldout import load_model
from tests.helpers.projects import project_dirs, smoke_config

AWS_KEY_ID = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}")
AWS_SECRET = re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", re.IGNORECASE)
PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==([^\s\\]+)", re.MULTILINE)
DOCKER_PROJECTS = [
    p for p in project_dirs() if "docker_env" in yaml.safe_load((p / "MLproject").read_text())
]
MNIST_DOCKER = PROJECTS / "mnist-docker"
ELASTICNET = PROJECTS / "elasticnet-docker"
MNIST_K8S = PROJECTS / "mnist-k8s"
BUILD_IMAGE = ["--build-image", "-A", "network=host"]
# The container writes a local store as its owner (the images run as uid 1000).
AS_OWNER = ["-A", f"user={os.getuid()}:{os.getgid()}"]


def pins(text: str) -> dict[str, str]:
    return {name.split("[")[0].lower(): version for name, version in PIN.findall(text)}


def dockerfile_of(project: Path) -> Path:
    """The Dockerfile that builds the project's docker_env image (mnist-k8s shares one)."""
    image = docker_image(project)
    owners = [
        p for p in DOCKER_PROJECTS if (p / "Dockerfile").exists() and docker_image(p) == image
    ]
    assert owners, f"no projects/*/Dockerfile builds {image}"
    return owners[0] / "Dockerfile"


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_dockerfile_holds_dependencies_only(project: Path) -> None:
    text = dockerfile_of(project).read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE}" in text
    assert not re.search(r"^\s*(COPY|ADD)\b", text, re.MULTILINE), "code arrives by --build-image"
    assert not re.search(r"^\s*ENV\s+AWS_", text, re.MULTILINE), "credentials arrive at run time"


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_container_pins_agree_with_the_repository(project: Path) -> None:
    repository = pins((ROOT / "requirements.txt").read_text())
    image = pins(dockerfile_of(project).read_text())
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
            text = path.read_text(errors="ignore")
            assert not AWS_KEY_ID.search(text), f"{name} holds an AWS access key id"
            assert not AWS_SECRET.search(text), f"{name} holds an AWS secret key"


@pytest.mark.docker
@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_no_secret_in_image_history_or_environment(project: Path) -> None:
    image = require_docker_image(project)
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    environment = subprocess.run(
        [
            "docker",
            "image",
            "inspect",
            "--format",
            "{{range .Config.Env}}{{println .}}{{end}}",
            image,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for text in (history, environment):
        assert not AWS_KEY_ID.search(text) and not AWS_SECRET.search(text)
    assert not [line for line in environment.splitlines() if line.startswith("AWS_")]


def test_run_docker_without_daemon_fails_fast(tmp_path: Path) -> None:
    result = make("run-docker", DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert "no Docker daemon answers" in one_line_reason(result, "make run-docker:")


def prog(project: Path) -> str:
    """The entry point's module (`python -m X.train` -> X.train): its error lines' prefix."""
    command = yaml.safe_load((project / "MLproject").read_text())["entry_points"]["main"]
    return re.search(r"python -m (\S+)", command["command"]).group(1)


def mounted(workdir: Path) -> list[str]:
    """The mount that keeps the model: the experiment's artifact root, under mlruns/."""
    return ["-A", f"v={workdir / 'mlruns'}:{workdir / 'mlruns'}"]


@pytest.mark.docker
@pytest.mark.parametrize("project", [MNIST_DOCKER, ELASTICNET], ids=lambda p: p.name)
def test_model_the_container_would_lose_stops_the_run(
    project: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """From an empty folder with the local store and no mount: one line before training."""
    require_docker_image(project)
    params = smoke_config(project)["parameters"]
    result = mlflow_run(project, tracking_uri, params, extra_args=BUILD_IMAGE, cwd=tmp_path)
    reason = one_line_reason(result, f"{prog(project)}: error:")
    assert "the model would be lost" in reason and "-A v=" in reason, reason
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert not run.data.metrics, "it trained before stopping"


@pytest.mark.docker
def test_with_the_mount_the_model_is_kept(tracking_uri: str, tmp_path: Path) -> None:
    require_docker_image(ELASTICNET)
    params = smoke_config(ELASTICNET)["parameters"]
    args = [*BUILD_IMAGE, *mounted(tmp_path), *AS_OWNER]
    result = mlflow_run(ELASTICNET, tracking_uri, params, extra_args=args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    model = load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.run_id == run.info.run_id


@pytest.mark.docker
def test_a_store_the_container_cannot_write_is_one_line(tracking_uri: str, tmp_path: Path) -> None:
    """The image's user is not the owner of the store: one line naming -A user=."""
    require_docker_image(ELASTICNET)
    if os.getuid() == 1000:
        pytest.skip("this user is the image's uid 1000: the store is writable")
    args = [*BUILD_IMAGE, *mounted(tmp_path)]
    result = mlflow_run(ELASTICNET, tracking_uri, {"alpha": 0.5}, extra_args=args, cwd=tmp_path)
    reason = one_line_reason(result, "elasticnet.train: error:")
    assert "not writable" in reason and "-A user=$(id -u):$(id -g)" in reason, reason


@pytest.mark.docker
def test_without_build_image_says_how(tracking_uri: str, tmp_path: Path) -> None:
    """The dependency image alone holds no code: one line naming --build-image."""
    require_docker_image(ELASTICNET)
    result = mlflow_run(ELASTICNET, tracking_uri, {"alpha": 0.5}, cwd=tmp_path)
    reason = one_line_reason(result, "elasticnet.train: error:")
    assert "mlflow run --build-image" in reason, reason
    assert "can't open file" not in result.stderr and "No module named" not in result.stderr


@pytest.mark.docker
@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(project: Path) -> None:
    image = require_docker_image(project)
    user = subprocess.run(
        ["docker", "run", "--rm", image, "id", "-u"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert user.isdigit() and int(user) != 0, user


# --- Credentials ---------------------------------------------------------------------------


def test_mlflow_loads_the_secrets_guard() -> None:
    """pyproject.toml declares project_tools.secrets as an MLflow plugin, so every `mlflow`
    command of this environment loads it (`make setup` installs it)."""
    found = importlib.metadata.entry_points(group="mlflow.run_context_provider")
    assert "project_tools.secrets:SecretsGuard" in [e.value for e in found]


def fake_credentials() -> dict[str, str]:
    """Recognisable, unique fake keys (no real key's shape: the repository scan stays clean)."""
    return {
        "AWS_ACCESS_KEY_ID": f"FAKEKEYID{secrets.token_hex(8).upper()}",
        "AWS_SECRET_ACCESS_KEY": f"fake-secret-{secrets.token_hex(16)}",
        "MLFLOW_TRACKING_PASSWORD": f"fake-password-{secrets.token_hex(8)}",
    }


def leaked(values: dict[str, str], *texts: str | bytes) -> list[str]:
    return [
        name
        for name, value in values.items()
        for text in texts
        if (value if isinstance(text, str) else value.encode()) in text
    ]


@pytest.mark.docker
@pytest.mark.server
def test_no_credential_value_in_the_output(tracking_uri: str, tmp_path: Path, s3: S3) -> None:
    """An s3:// artifact root makes MLflow hand the keys to the container as `-e NAME=VALUE`
    and log that command: the keys reach the container (the model is in S3) and no value is
    printed, nor written to the store or any file of the run's folder."""
    require_docker_image(ELASTICNET)
    prefix = f"leak-{secrets.token_hex(4)}"
    MlflowClient(tracking_uri).create_experiment("tests", f"s3://{s3.bucket}/{prefix}")
    keys = fake_credentials()
    env = {**os.environ, **keys, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    args = [*BUILD_IMAGE, *AS_OWNER]
    result = mlflow_run(
        ELASTICNET, tracking_uri, {"alpha": 0.5}, extra_args=args, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AWS_SECRET_ACCESS_KEY=***" in result.stderr, "MLflow no longer logs the command?"
    assert any(key.endswith("MLmodel") for key in s3.object_keys(prefix)), "no model in S3"
    files = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert leaked(keys, result.stdout, result.stderr, *files) == []


@pytest.mark.docker
@pytest.mark.server
@pytest.mark.slow
def test_make_run_docker_prints_no_credential_value(
    tracking_uri: str, tmp_path: Path, s3: S3
) -> None:
    """`make run-docker` (both projects, mnist for one epoch) with the keys in the
    environment and an s3:// artifact root: no value in what it prints."""
    require_docker_image(MNIST_DOCKER)
    require_docker_image(ELASTICNET)
    prefix = f"make-{secrets.token_hex(4)}"
    MlflowClient(tracking_uri).create_experiment("tests", f"s3://{s3.bucket}/{prefix}")
    keys = fake_credentials()
    result = make(
        "run-docker",
        f"TRACKING_URI={tracking_uri}",
        "RUN_ARGS=-P epochs=1 -P batch_size=128",
        timeout=1200,
        MLFLOW_EXPERIMENT_NAME="tests",
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        **keys,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("AWS_SECRET_ACCESS_KEY=***") == 2, result.stderr[-3000:]
    assert len([k for k in s3.object_keys(prefix) if k.endswith("MLmodel")]) == 2
    assert leaked(keys, result.stdout, result.stderr) == []


@pytest.mark.docker
def test_build_refuses_a_credential_file(tracking_uri: str, tmp_path: Path) -> None:
    """MLflow copies the whole folder into the image (no .dockerignore): a .env is refused
    with one line before the build, the run FAILED; a *.example template is not refused."""
    require_docker_image(ELASTICNET)
    project = tmp_path / "elasticnet-docker"
    shutil.copytree(ELASTICNET, project, symlinks=False)  # links followed, as MLflow does
    keys = fake_credentials()
    (project / ".env.example").write_text("AWS_SECRET_ACCESS_KEY=\n")
    (project / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={keys['AWS_SECRET_ACCESS_KEY']}\n")
    result = mlflow_run(project, tracking_uri, {"alpha": 0.5}, extra_args=BUILD_IMAGE, cwd=tmp_path)
    assert result.returncode != 0
    reasons = [line for line in result.stderr.splitlines() if "holds credentials" in line]
    assert len(reasons) == 1 and f"{project}/.env " in reasons[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert only_run(tracking_uri).info.status == "FAILED"
    assert leaked(keys, result.stdout, result.stderr) == []


def with_password(url: str, password: str) -> str:
    """``url`` (http://host:port) with the user ``alice`` and ``password`` in it."""
    return url.replace("://", f"://alice:{password}@", 1)


def test_make_run_masks_the_password_of_a_tracking_server_that_is_down() -> None:
    """`make run` on http://alice:<password>@<closed port>: within 30 s, one line naming the
    URI with its password masked; the password is in nothing it prints."""
    password = f"fake-uri-password-{secrets.token_hex(8)}"
    down = f"http://{HOST}:{free_port()}"
    started = time.monotonic()
    result = make("run", f"TRACKING_URI={with_password(down, password)}", "RUN_ARGS=-P epochs=1")
    assert time.monotonic() - started < 30
    masked = with_password(down, "***")
    reason = one_line_reason(result, "mlflow: error:")
    assert f"tracking server {masked} did not answer" in reason, reason
    assert f"Tracking store: {masked}" in result.stdout, result.stdout
    assert leaked({"uri password": password}, result.stdout, result.stderr) == []


def kube_context(path: Path, name: str, server: str) -> Path:
    """A kubeconfig at ``path`` whose only context ``name`` points at ``server``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.docker
def test_make_run_k8s_masks_the_password_of_a_database_store(tmp_path: Path) -> None:
    """A PostgreSQL store is refused (the pod needs a server) in one line naming it, with its
    password masked."""
    require_docker()
    password = f"fake-db-password-{secrets.token_hex(8)}"
    database = f"postgresql://mlflow:{password}@{HOST}:5432/mlflow"
    kubeconfig = kube_context(tmp_path / "kubeconfig", "lab", f"https://{HOST}:{free_port()}")
    result = make(
        "run-k8s", f"TRACKING_URI={database}", KUBECONFIG=str(kubeconfig), KUBE_CONTEXT="lab"
    )
    reason = one_line_reason(result, "make run-k8s:")
    assert f"not postgresql://mlflow:***@{HOST}:5432/mlflow" in reason, reason
    assert leaked({"database password": password}, result.stdout, result.stderr) == []


@pytest.mark.docker
@pytest.mark.server
@pytest.mark.slow
def test_make_run_k8s_prints_no_credential_value(
    registry: str, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """`make run-k8s` as far as it goes without a cluster: the image is built, pushed to a real
    registry and the Job submitted, to a kube context whose API server is a closed port (no
    Kubernetes cluster can run here). Fake keys in the environment and a password in the
    tracking URI: no value is in what it prints."""
    require_docker_image(MNIST_K8S)
    keys = fake_credentials() | {"uri password": f"fake-uri-password-{secrets.token_hex(8)}"}
    env = {k: v for k, v in keys.items() if k != "uri password"}
    kubeconfig = kube_context(tmp_path / "kubeconfig", "lab", f"https://{HOST}:{free_port()}")
    result = make(
        "run-k8s",
        f"TRACKING_URI={with_password(tracking_server.url, keys['uri password'])}",
        "RUN_ARGS=-P epochs=1",
        timeout=900,
        KUBECONFIG=str(kubeconfig),
        KUBE_CONTEXT="lab",
        REGISTRY=registry,
        **env,
    )
    pushed = [line for line in result.stderr.splitlines() if "=== Pushing docker image" in line]
    for line in pushed:  # the tag MLflow built and pushed
        subprocess.run(["docker", "rmi", line.split()[-2]], capture_output=True, check=False)
    assert result.returncode != 0, "no cluster answers: the Job cannot have been created"
    assert pushed and "=== Creating Job" in result.stderr, result.stderr[-3000:]
    assert f"Tracking store: {with_password(tracking_server.url, '***')}" in result.stdout
    assert leaked(keys, result.stdout, result.stderr) == []


def test_gitignore_keeps_credential_files_out_and_templates_in() -> None:
    def ignored(name: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False)
        return check.returncode == 0

    for name in (".env", "projects/x/.env", ".env.prod", "prod.env", "basic_auth.ini"):
        assert ignored(name), name
    assert ignored("ready_for_mlflow/deploy/secrets-prod.yaml")
    assert not ignored("ready_for_mlflow/.env.example")
    assert not ignored("ready_for_mlflow/deploy/secrets.example.yaml")
