"""The shared data loader: IDX parsing, validation of corrupt files, layouts, loaders."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
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
from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.ready_for_mlflow.servers import client_env
from tests.helpers.commands import in_project, one_line_reason
from tests.helpers.hostile import BOMB_IMAGES, run_limited, write_idx_bomb, write_labels

MNIST_CONDA = PROJECTS / "mnist-conda"

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


def test_size_limit_names_the_file_and_how_to_raise_it(
    tmp_path: Path, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split(tmp_path, *digits, gz=True)  # 5 images: 3920 bytes of data
    with pytest.raises(IDXFormatError, match=rf"{IMAGES}.gz: header says .* = 3,920 bytes, more "):
        load_mnist(tmp_path, max_bytes=3919)
    monkeypatch.setenv("DATA_LOADER_MAX_IDX_MB", "1")
    assert len(load_mnist(tmp_path, max_bytes=3920)) == 5
    assert len(load_mnist(tmp_path)) == 5
    monkeypatch.setenv("DATA_LOADER_MAX_IDX_MB", "lots")
    with pytest.raises(ValueError, match="DATA_LOADER_MAX_IDX_MB must be a whole number"):
        load_mnist(tmp_path)


def test_dimensions_whose_product_overflows(tmp_path: Path) -> None:
    path = tmp_path / IMAGES
    path.write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2**32 - 1, 2**32 - 1, 2**32 - 1))
    with pytest.raises(IDXFormatError, match=rf"{IMAGES}: header says \(4294967295, .* limit"):
        read_idx(path, expected_ndim=3)


def test_empty_and_one_image_splits(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8))
    with pytest.raises(IDXFormatError, match=rf"{IMAGES}: holds 1 image\(s\), .* at least 2"):
        load_mnist(tmp_path, split="train")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(IDXFormatError, match="t10k-images-idx3-ubyte: holds 0 image"):
        load_mnist(tmp_path, split="test")
    with pytest.raises(ValueError, match="cannot split 1 item"):
        split_train_val(torch.utils.data.TensorDataset(torch.zeros(1)), 0.1, seed=0)
    train, val = split_train_val(torch.utils.data.TensorDataset(torch.zeros(2)), 0.9, seed=0)
    assert (len(train), len(val)) == (1, 1)


def train_cli(data_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The MNIST project's entry point on ``data_dir``, as `mlflow run` starts it."""
    return subprocess.run(
        [sys.executable, "-m", "mnist.train", "--data-dir", str(data_dir), "--epochs", "1"],
        env=in_project(MNIST_CONDA, client_env(f"sqlite:///{tmp_path / 'mlflow.db'}")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def bad_data(folder: Path, case: str) -> str:
    """Write the MNIST files of ``case``; return the words the one-line error must hold."""
    train, test = (5, 3)
    if case == "no-train-images":
        train = 0
    elif case == "one-train-image":
        train = 1
    elif case == "no-test-images":
        test = 0
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", np.zeros((count, 28, 28), np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.zeros(count, np.uint8))
    if case == "overflowing-dims":
        dims = struct.pack(">HBB3I", 0, 8, 3, 2**32 - 1, 2**32 - 1, 28)
        (folder / f"{IMAGES}").write_bytes(dims)
        return f"{folder / IMAGES}: header says"
    name = "t10k-images-idx3-ubyte" if case == "no-test-images" else IMAGES
    return f"{folder / name}: holds {train if name == IMAGES else test} image(s)"


@pytest.mark.parametrize(
    "case", ["no-train-images", "one-train-image", "no-test-images", "overflowing-dims"]
)
def test_bad_data_stops_training_with_one_line(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    words = bad_data(folder, case)
    result = train_cli(folder, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in one_line_reason(result, "mnist.train: error: ")


LOAD_ARRAYS = (
    "import sys; from data_loader import load_mnist_arrays as load; "
    "print(len(load(sys.argv[1])[0]))"
)
MIB = 1 << 20


def test_gzip_bomb_under_a_memory_limit(tmp_path: Path, digits) -> None:
    """The 194 KB file that inflates to 200 MB: refused from its header at the default limit
    (nothing inflated), held once when the limit is raised, one line from the project."""
    small, bomb = tmp_path / "small", tmp_path / "bomb"
    write_split(small, *digits, gz=True)
    bomb.mkdir()
    write_idx_bomb(bomb / f"{IMAGES}.gz")
    write_labels(bomb / f"{LABELS}.gz", BOMB_IMAGES)
    env = in_project(MNIST_CONDA, client_env(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    limit = 3 << 30

    def load(folder: Path, **extra: str):
        command = [sys.executable, "-c", LOAD_ARRAYS, str(folder)]
        return run_limited(command, limit, env | extra, tmp_path)

    baseline = load(small)
    assert baseline.returncode == 0 and baseline.stdout.strip() == "5", baseline.stderr
    refused = load(bomb)
    assert refused.returncode == 1
    assert f"{bomb / IMAGES}.gz: header says (255102, 28, 28) = 199,999,968 bytes" in refused.stderr
    assert "more than the limit of 134,217,728 bytes" in refused.stderr
    assert refused.peak_rss - baseline.peak_rss < 50 * MIB, (refused.peak_rss, baseline.peak_rss)

    raised = load(bomb, DATA_LOADER_MAX_IDX_MB="256")
    assert raised.returncode == 0 and raised.stdout.strip() == str(BOMB_IMAGES), raised.stderr
    assert raised.peak_rss - baseline.peak_rss < 260 * MIB  # 191 MiB of images, held once

    command = [sys.executable, "-m", "mnist.train", "--data-dir", str(bomb), "--epochs", "1"]
    project = run_limited(command, 6 << 30, env, tmp_path)
    assert project.returncode == 2, project.stderr[-2000:]
    lines = [line for line in project.stderr.splitlines() if line.startswith("mnist.train:")]
    assert len(lines) == 1 and "raise it with DATA_LOADER_MAX_IDX_MB=<MiB>" in lines[0], lines
    assert "Traceback" not in project.stderr
