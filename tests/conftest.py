"""Fixtures only; helpers live in tests/helpers.

Session fixtures are shared by every test module: one S3 endpoint, one tracking server, one
image registry and one default-trained MNIST model.

`make test` runs the quick part (``-m "not (docker or server or slow or uv or k8s or conda)"``),
`make test-all` everything. ``pytest_collection_modifyitems`` below marks a test by the
fixtures it uses (a server fixture makes it ``server``); a test that trains or runs a project
carries ``slow`` in its own file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from data_loader import load_mnist
from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.ready_for_mlflow.servers import (
    S3,
    TrackingServer,
    mlflow_server,
    moto_s3,
)
from mlflow_project_store.rollout_receiver import LOCAL_DELIVERY
from tests.helpers.artifacts import DigitFiles, TrainedModel
from tests.helpers.commands import run_project
from tests.helpers.components import require, require_docker_image
from tests.helpers.outside import GitStore, git_daemon, make_launcher
from tests.helpers.servers import docker_registry
from tests.helpers.serving import ServedImage, build_served_image, untag

HELDOUT_PNGS = 120
# Fixtures that start a server (moto S3, mlflow server, the image registry) or need Docker.
SERVER_FIXTURES = {"s3", "tracking_server", "trained_mnist", "registry", "git_store"}
DOCKER_FIXTURES = {"registry"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add the markers that `make test` selects on (see the module docstring)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        if fixtures & DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)


REGISTRY_CACHE = Path.home() / ".cache" / "mlflow-project-store" / "registry"


@pytest.fixture(scope="session", autouse=True)
def no_pickled_models() -> Iterator[None]:
    """Every test, and every process it starts, runs with MLflow's pickle switch off, as
    `make predict` does: models load through predict.safety (pt2 and checked skops)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        yield


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store, also this process's tracking URI for the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with moto_s3(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[TrackingServer]:
    """`mlflow server`: SQLite backend store, artifacts proxied to ``s3://mlflow/artifacts``;
    it delivers registry webhooks to receivers on loopback over HTTP (LOCAL_DELIVERY)."""
    workdir = tmp_path_factory.mktemp("tracking")
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    with mlflow_server(workdir, store, s3, extra_env=LOCAL_DELIVERY) as server:
        yield server


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image registry of `make registry` on a free loopback port; yields ``host:port``.

    Its storage is kept in a cache folder, as a team registry keeps its layers: the first push
    uploads the ~7 GB dependency layers (minutes), later pushes only the project's code layer.
    """
    require(
        "docker-registry",
        shutil.which("docker-registry") is not None,
        "apt-get install docker-registry",
    )
    with docker_registry(tmp_path_factory.mktemp("registry"), REGISTRY_CACHE) as address:
        yield address


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a virtualenv with only mlflow and uv: a user's, not this repository's."""
    return make_launcher(tmp_path_factory.mktemp("launcher"))


@pytest.fixture(scope="session")
def git_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitStore]:
    """This repository's committed HEAD, served over git:// on loopback."""
    require("git daemon", shutil.which("git") is not None, "apt-get install git")
    with git_daemon(tmp_path_factory.mktemp("git")) as store:
        yield store


@pytest.fixture(scope="session")
def trained_mnist(tracking_server: TrackingServer) -> TrainedModel:
    """projects/mnist-conda at its defaults (14 epochs, 99% accuracy: README's "The default
    recipe"), registered as ``mnist``: the one full training of a session, used wherever a test
    needs a good model."""
    params = {"registered_model_name": "mnist"}
    result = run_project(tracking_server.url, "default-training", params)
    assert result.returncode == 0, result.stderr[-3000:]
    version = MlflowClient(tracking_server.url).get_model_version_by_alias("mnist", "candidate")
    return TrainedModel("mnist", version.version, version.run_id, tracking_server.url)


@pytest.fixture(scope="session")
def served_image(trained_mnist: TrainedModel, registry: str) -> Iterator[ServedImage]:
    """The trained model registered again as ``served-mnist`` and its serving image, built and
    pushed once by `make serving-image` (fake keys in its environment): the session's one
    serving-image build. Its tags in this session's registry go at the end."""
    require_docker_image(PROJECTS / "mnist-docker")
    yield build_served_image(trained_mnist, registry)
    untag(f"{registry}/served-mnist-serving")


@pytest.fixture(scope="session")
def heldout_pngs(tmp_path_factory: pytest.TempPathFactory) -> DigitFiles:
    """Held-out test digits as image files in the forms people have them.

    A quarter each: 28x28 grayscale PNG, RGB PNG, 56x56 PNG, and a dark-on-light JPEG.
    """
    folder = tmp_path_factory.mktemp("digits")
    test = load_mnist(split="test")
    pixels = (test.images[:HELDOUT_PNGS, 0].numpy() * 255).round().astype(np.uint8)
    for i, digit in enumerate(pixels):
        image = Image.fromarray(digit, mode="L")
        match i % 4:
            case 0:
                image.save(folder / f"{i:03d}.png")
            case 1:
                image.convert("RGB").save(folder / f"{i:03d}.png")
            case 2:
                image.resize((56, 56), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
            case 3:
                Image.fromarray(255 - digit).save(folder / f"{i:03d}.jpg", quality=95)
    return DigitFiles(folder, test.labels[:HELDOUT_PNGS].numpy())
