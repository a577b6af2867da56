"""The serving image as the tests use it: `make serving-image` of the session's trained model,
and a container of an image run the way the pod of ready_for_mlflow/deploy/model-serving.yaml
runs it (the kubelet stood in for by `docker run`, as in tests/helpers/cluster.py)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import ROOT
from mlflow_project_store.predict.inputs import open_input
from mlflow_project_store.predict.rest_client import invocations
from mlflow_project_store.project_tools.registry import register_candidate
from mlflow_project_store.ready_for_mlflow.servers import HOST, free_port
from mlflow_project_store.rollout import TEMPLATE, deployment_of
from tests.helpers.artifacts import TrainedModel
from tests.helpers.cluster import pod_security, pod_volumes
from tests.helpers.commands import make
from tests.helpers.credentials import fake_credentials

SERVED = "served-mnist"
SAMPLES = ROOT / "example" / "predict" / "samples" / "digits"
READY_SECONDS = 240


@dataclass(frozen=True)
class ServedImage:
    """`make serving-image` of version ``version`` of ``model``, pushed to the test registry."""

    model: str
    version: str
    run_id: str
    source: str  # the model version's source (models:/m-...), to register more versions of it
    tracking_uri: str
    registry: str
    stdout: str
    planted: dict[str, str]  # the fake credentials that were in make's environment

    @property
    def pushed(self) -> str:
        """The digest reference, the last line make printed."""
        return self.stdout.strip().splitlines()[-1]


def register_version(tracking_uri: str, source: str, name: str = SERVED) -> str:
    """``source`` registered as a new version of ``name`` (alias candidate), as projects do."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        return register_candidate(source, name, {"test_accuracy": 0.99}, "test_accuracy", True)


def build_served_image(trained: TrainedModel, registry: str) -> ServedImage:
    """The trained model registered again as ``served-mnist`` and `make serving-image` of its
    alias ``candidate``, with fake keys and a tracking password in make's environment."""
    source = MlflowClient(trained.tracking_uri).get_model_version(trained.name, trained.version)
    version = register_version(trained.tracking_uri, source.source)
    planted = fake_credentials()
    result = make(
        "serving-image",
        f"MODEL=models:/{SERVED}@candidate",
        f"REGISTRY={registry}",
        f"TRACKING_URI={trained.tracking_uri}",
        timeout=1800,
        **planted,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return ServedImage(
        SERVED,
        version,
        trained.run_id,
        source.source,
        trained.tracking_uri,
        registry,
        result.stdout,
        planted,
    )


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def inspect(image: str) -> dict:
    found = docker("image", "inspect", image)
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)[0]


def pod_of(manifest: Path = TEMPLATE) -> tuple[dict, dict]:
    """(pod spec, its container) of the Deployment in ``manifest``."""
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    pod = deployment_of(documents)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def pod_flags(manifest: Path = TEMPLATE) -> list[str]:
    """`docker run` flags of the pod's securityContext and emptyDir volumes as the stand-in
    kubelet applies them (tests/helpers/cluster.py), and of its literal env."""
    pod, container = pod_of(manifest)
    flags = pod_security(pod, container) + pod_volumes(pod, container)
    for item in container.get("env", []):
        flags += ["-e", f"{item['name']}={item['value']}"]
    return flags


@contextmanager
def scoring_container(image: str, manifest: Path = TEMPLATE) -> Iterator[str]:
    """``image`` pulled from its registry (by digest) and run as the manifest's pod, on a free
    loopback port (the containers share the host's network, where a pod has its own: the
    manifest's --host 0.0.0.0 --port 8080 become these); yields its URL once /ping answers."""
    pulled = docker("pull", "-q", image, timeout=1200)
    assert pulled.returncode == 0, f"the registry has no {image}: {pulled.stderr}"
    name, port = f"scoring-{uuid.uuid4().hex[:12]}", free_port()
    run = ["run", "-d", "--rm", "--name", name, "--network", "host", *pod_flags(manifest)]
    started = docker(*run, image, "--host", HOST, "--port", str(port))
    assert started.returncode == 0, started.stderr
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(url, name)
        yield url
    finally:
        docker("rm", "-f", name)


def wait_ready(url: str, container: str) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip() != "true":
            raise AssertionError(f"the container stopped: {docker('logs', container).stderr}")
        time.sleep(1)
    logs = docker("logs", container)
    raise AssertionError(f"{url}/ping not ready in {READY_SECONDS} s: {logs.stderr[-2000:]}")


def sample_digits() -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sample PNGs of example/predict/samples/digits: names, labels (from digits.csv beside
    them) and the (N, 1, 28, 28) images as the REST client sends them."""
    ((names, images),) = list(open_input(SAMPLES).batches(64))
    labels = pd.read_csv(SAMPLES.with_suffix(".csv")).set_index("file")["label"]
    return names, labels.loc[names].to_numpy(), images


def served_digits(url: str, images: np.ndarray) -> np.ndarray:
    """The digits the scoring server at ``url`` predicts for ``images`` (POST /invocations)."""
    return invocations(url, images).argmax(axis=1)


def image_label(image: str, key: str) -> str:
    return (inspect(image)["Config"].get("Labels") or {}).get(key, "")


def untag(repository: str) -> None:
    """Remove the tags of ``repository`` a test made, not the image: the same build elsewhere
    (Docker's build cache gives it the same id) keeps its own tags."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository)
    if tags := listed.stdout.split():
        docker("rmi", *tags)
