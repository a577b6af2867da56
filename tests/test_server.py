"""The tracking server: `mlflow run` on it, S3 artifacts, PostgreSQL, basic auth, `make server`,
and the credentials it documents."""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import ROOT
from mlflow_project_store.ready_for_mlflow.servers import (
    HOST,
    NO_JOB_RUNNERS,
    S3,
    TrackingServer,
    free_port,
    mlflow_server,
    mlflow_server_command,
    running,
    start,
    stop,
)
from tests.helpers.commands import make, one_line_reason, run_project
from tests.helpers.components import require
from tests.helpers.heldout import mnist_accuracy
from tests.helpers.servers import postgres, postgres_binaries

TINY = {"epochs": 1, "batch_size": 128}
pytestmark = pytest.mark.server


def no_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process becomes a client without any S3 endpoint or AWS credential."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key == "MLFLOW_S3_ENDPOINT_URL":
            monkeypatch.delenv(key)


def assert_registered_with_artifacts_in_s3(
    server: TrackingServer, s3: S3, experiment: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlflow run` of mnist-conda registers ``name``; its files are S3 objects; it predicts."""
    result = run_project(server.url, experiment, TINY | {"registered_model_name": name})
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    version = client.get_model_version_by_alias(name, "candidate")
    assert version.run_id == run.info.run_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"])

    prefix = server.artifacts.removeprefix(f"s3://{s3.bucket}/")
    keys = s3.object_keys(prefix)
    model_id = version.model_id or version.source.rsplit("/", 1)[-1]  # source: models:/<id>
    model_files = [k for k in keys if f"/{model_id}/" in k]
    assert any(k.endswith("/MLmodel") for k in model_files), (version.source, keys)
    assert any(k.endswith(".pt2") for k in model_files), model_files

    no_s3_credentials(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    assert mnist_accuracy(model) > 0.5  # chance: 0.10


def test_mlflow_run_registers_model_with_artifacts_in_s3(
    tracking_server: TrackingServer, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_registered_with_artifacts_in_s3(
        tracking_server, s3, "sqlite-store", "mnist-sqlite", monkeypatch
    )


@pytest.mark.slow
def test_postgresql_backend_store(tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = postgres_binaries()
    require("PostgreSQL", bin_dir is not None, "apt-get install postgresql")
    with postgres(bin_dir) as uri, mlflow_server(tmp_path, uri, s3, prefix="pg") as server:
        assert_registered_with_artifacts_in_s3(
            server, s3, "postgres-store", "mnist-pg", monkeypatch
        )


def http_status(url: str, auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode() if body else None)
    request.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_basic_auth_server(tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous requests get 401; a user logs a run; a wrong password is refused."""
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-local-pass-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "local-test-secret-key",
    }
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_server(tmp_path, backend, s3, "auth", ("--app-name", "basic-auth"), env) as server:
        search = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(search) == 401
        admin = ("admin", "admin-local-pass-1")
        user = {"username": "alice", "password": "alice-local-pass-1"}
        assert http_status(f"{server.url}/api/2.0/mlflow/users/create", admin, user) == 200

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-local-pass-1")
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("alice-experiment"))
        client.log_metric(run.info.run_id, "score", 0.5)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"score": 0.5}

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
        with pytest.raises(MlflowException, match=r"401|nauthorized|credentials"):
            MlflowClient(server.url).get_run(run.info.run_id)
        assert http_status(search, ("alice", "wrong-password")) == 401
        # What a user sees instead of MLflow's traceback: one line, before anything runs.
        refused = make("run", f"TRACKING_URI={server.url}")
        line = one_line_reason(refused, "make run: error:")
        assert "refused the credentials of user 'alice' (HTTP 401)" in line, line
        assert "wrong-password" not in refused.stdout + refused.stderr
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        anonymous = make("run", f"TRACKING_URI={server.url}")
        assert "asks for credentials (HTTP 401)" in one_line_reason(anonymous, "make run: error:")


def test_make_server_and_server_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make server` serves a client without S3 keys, objects land in its S3; `server-stop`."""
    ports = {"SERVER_PORT": free_port(), "S3_PORT": free_port()}
    # ENV_FILE= : a developer's .env (real S3 keys) must not steer the test.
    variables = [f"{k}={v}" for k, v in ports.items()] + [f"SERVER_STATE={tmp_path}", "ENV_FILE="]
    for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    started = make("server", *variables, timeout=180, **NO_JOB_RUNNERS)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        assert len(pids) == 2, sorted(p.name for p in tmp_path.iterdir())
        url = f"http://{HOST}:{ports['SERVER_PORT']}"
        assert url in started.stdout

        no_s3_credentials(monkeypatch)
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("make-server"))
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        s3 = S3(f"http://{HOST}:{ports['S3_PORT']}", "mlflow")
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in s3.object_keys())
    finally:
        stopped = make("server-stop", f"SERVER_STATE={tmp_path}", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(running(pid) for pid in pids)
    assert not list(tmp_path.glob("*.pid"))


def test_env_example_documents_every_variable() -> None:
    ready = ROOT / "ready_for_mlflow"
    example = (ready / ".env.example").read_text()
    guide = (ready / "README.md").read_text()
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):
        assert re.search(rf"^#? ?{name}=", example, re.MULTILINE), name
        assert f"`{name}`" in guide, name


def private_ca_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1: (ca, cert, key)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, request = folder / "server.pem", folder / "server.key", folder / "server.csr"
    extensions = folder / "san.cnf"
    extensions.write_text(f"subjectAltName=IP:{HOST}\n")
    openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj"]
    for command in (
        [*openssl, "/CN=store-test-ca", "-x509", "-days", "1", "-keyout", ca_key, "-out", ca],
        [*openssl, f"/CN={HOST}", "-keyout", key, "-out", request],
        ["openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-days", "1", "-extfile", extensions, "-out", cert],
    ):  # fmt: skip
        subprocess.run(list(map(str, command)), capture_output=True, check=True)
    return ca, cert, key


def test_server_behind_a_private_ca_is_checked_with_mlflows_tls_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `mlflow server` serving TLS with a certificate of a private CA: the make targets'
    check trusts what MLflow's client trusts (MLFLOW_TRACKING_SERVER_CERT_PATH,
    MLFLOW_TRACKING_INSECURE_TLS); without either, one line names the setting."""
    ca, cert, key = private_ca_certificate(tmp_path)
    port = free_port()
    url = f"https://{HOST}:{port}"
    command = [
        *mlflow_server_command(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path), port),
        "--uvicorn-opts",
        f"--ssl-keyfile {key} --ssl-certfile {cert}",
    ]
    server = start(command, tmp_path / "server.log", NO_JOB_RUNNERS | dict(os.environ))
    trusted = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5, context=trusted).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "server.log"
                ).read_text()[-2000:]
                time.sleep(1)
        check = [
            sys.executable,
            "-m",
            "mlflow_project_store.store",
            "--check",
            "--prog",
            "make run",
        ]
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        for name in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS"):
            env.pop(name, None)
        untrusted = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
        line = one_line_reason(untrusted, "make run: error:")
        assert f"tracking server {url} has a TLS certificate" in line, line
        assert "set MLFLOW_TRACKING_SERVER_CERT_PATH" in line, line
        for setting in ({"MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca)},
                        {"MLFLOW_TRACKING_INSECURE_TLS": "true"}):  # fmt: skip
            passed = subprocess.run(
                check, env=env | setting, capture_output=True, text=True, timeout=120
            )
            assert passed.returncode == 0, (setting, passed.stderr[-2000:])
        # MLflow's own client agrees with the check.
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca))
        assert MlflowClient(url).search_experiments()[0].name == "Default"
    finally:
        stop(server, timeout=10)
