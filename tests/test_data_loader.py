"""The shared data loader: IDX parsing, validation of corrupt files, layouts, loaders."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader import (
    BUNDLED_SAMPLE,
    IDXFormatError,
    MNISTDownloadError,
    MNISTNotFoundError,
    load_diabetes_split,
    load_mnist,
    make_loader,
    read_idx,
    split_train_val,
    write_idx,
)

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{IMAGES}{suffix}", images)
    write_idx(folder / f"{LABELS}{suffix}", labels)


@pytest.fixture
def digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([0, 3, 9, 1, 7], np.uint8)


def test_bundled_sample_is_the_documented_real_sample() -> None:
    train, test = load_mnist(split="train"), load_mnist(split="test")
    assert (len(train), len(test)) == (8000, 2000)
    assert train.images.shape == (8000, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.images.min() >= 0.0 and train.images.max() <= 1.0
    assert torch.bincount(test.labels).tolist() == [
        200,
        236,
        190,
        206,
        201,
        173,
        194,
        226,
        188,
        186,
    ]
    assert "MNIST database" in (BUNDLED_SAMPLE / "README.md").read_text()


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_flat_folder(tmp_path: Path, digits, gz: bool) -> None:
    images, labels = digits
    write_split(tmp_path, images, labels, gz=gz)
    dataset = load_mnist(tmp_path, split="train")
    assert torch.equal(dataset.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(dataset.images[:, 0] * 255, torch.from_numpy(images).float())


def test_torchvision_layout(tmp_path: Path, digits) -> None:
    write_split(tmp_path / "MNIST" / "raw", *digits)
    assert len(load_mnist(tmp_path, split="train")) == 5


def test_missing_files_say_where_and_what(tmp_path: Path) -> None:
    with pytest.raises(MNISTNotFoundError, match=f"no MNIST test files in {tmp_path}: expected"):
        load_mnist(tmp_path, split="test")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(tmp_path, split="validation")


def test_wrong_magic_number(tmp_path: Path, digits) -> None:
    images, labels = digits
    write_split(tmp_path, images, labels)
    shutil.copy(tmp_path / LABELS, tmp_path / IMAGES)  # a labels file where images belong
    with pytest.raises(IDXFormatError, match=f"{IMAGES}: wrong magic number 2049, expected 2051"):
        load_mnist(tmp_path)


def test_truncated_data(tmp_path: Path, digits) -> None:
    write_split(tmp_path, *digits)
    path = tmp_path / IMAGES
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IDXFormatError, match=r"truncated: header says \(5, 28, 28\) = 3920 bytes"):
        load_mnist(tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / IMAGES
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(IDXFormatError, match="header ends before its dimension sizes"):
        read_idx(path, expected_ndim=3)


def test_truncated_gzip(tmp_path: Path, digits) -> None:
    write_split(tmp_path, *digits, gz=True)
    path = tmp_path / f"{IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip data"):
        load_mnist(tmp_path)


def test_trailing_data(tmp_path: Path, digits) -> None:
    write_split(tmp_path, *digits)
    path = tmp_path / LABELS
    path.write_bytes(gzip.decompress(gzip.compress(path.read_bytes())) + b"\x01")
    with pytest.raises(IDXFormatError, match="trailing data"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path: Path, digits) -> None:
    images, labels = digits
    write_split(tmp_path, images, labels[:4])
    with pytest.raises(IDXFormatError, match=f"{LABELS}: 4 labels for 5 images"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path: Path, digits) -> None:
    images, labels = digits
    labels[2] = 12
    write_split(tmp_path, images, labels)
    with pytest.raises(IDXFormatError, match=f"{LABELS}: label 12 at index 2 is outside 0-9"):
        load_mnist(tmp_path)


def test_images_not_28x28(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((2, 20, 20), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(IDXFormatError, match="expected 28x28"):
        load_mnist(tmp_path)


def test_offline_download_says_how_to_use_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's real download code, pointed at a closed loopback port: no network."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(MNISTDownloadError, match="offline, copy the four IDX files"):
        load_mnist(tmp_path / "mnist", download=True)


def test_split_is_seeded_and_disjoint() -> None:
    dataset = load_mnist(split="test")
    train_a, val_a = split_train_val(dataset, 0.1, seed=5)
    train_b, _ = split_train_val(dataset, 0.1, seed=5)
    assert (len(train_a), len(val_a)) == (1800, 200)
    assert train_a.indices == train_b.indices
    assert not set(train_a.indices) & set(val_a.indices)


def test_loader_shuffle_depends_only_on_seed() -> None:
    dataset = load_mnist(split="test")

    def first_labels(seed: int) -> list[int]:
        return next(iter(make_loader(dataset, 32, shuffle=True, seed=seed)))[1].tolist()

    assert first_labels(1) == first_labels(1) != first_labels(2)
    images, labels = next(iter(make_loader(dataset, 32)))
    assert images.shape == (32, 1, 28, 28) and labels.dtype == torch.int64


def test_diabetes_split() -> None:
    x_train, x_test, _, y_test = load_diabetes_split(test_fraction=0.25, seed=1)
    assert x_train.shape[1] == 10 and len(x_train) + len(x_test) == 442
    assert len(y_test) == len(x_test)
