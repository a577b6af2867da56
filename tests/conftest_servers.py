"""Session fixtures: one S3 endpoint, one tracking server and one default-trained MNIST model.

Registered from conftest.py (``pytest_plugins``) so that every test module shares them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from data_loader import load_mnist
from servers import S3, TrackingServer, mlflow_server, moto_s3, run_project

HELDOUT_PNGS = 120


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with moto_s3(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[TrackingServer]:
    """`mlflow server`: SQLite backend store, artifacts proxied to ``s3://mlflow/artifacts``."""
    workdir = tmp_path_factory.mktemp("tracking")
    with mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}", s3) as server:
        yield server


@dataclass(frozen=True)
class TrainedModel:
    name: str
    version: str
    run_id: str
    tracking_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@pytest.fixture(scope="session")
def trained_mnist(tracking_server: TrackingServer) -> TrainedModel:
    """projects/mnist-conda at its default parameters, registered as ``mnist`` (about 1 min)."""
    result = run_project(
        tracking_server.url, "default-training", {"registered_model_name": "mnist"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = MlflowClient(tracking_server.url).get_model_version_by_alias("mnist", "candidate")
    return TrainedModel("mnist", version.version, version.run_id, tracking_server.url)


@dataclass(frozen=True)
class DigitFiles:
    folder: Path
    labels: np.ndarray


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
