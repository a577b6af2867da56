"""Read what the predict example feeds a model: digit images, an MNIST IDX file or CSV rows.

Digits become MNIST's tensor layout: float32 ``(N, 1, 28, 28)``, pixels in [0, 1], a light
digit on a dark background. Any decodable image works: colour is converted to grayscale,
other sizes are resized to 28x28, and a dark digit on a light background (a scan, a
drawing) is inverted, judged by the image's border.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from data_loader import IDXFormatError, read_idx

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = 28
EXPECTED = "a folder of PNG/JPEG digit images, a PNG/JPEG image, an MNIST IDX image file or a CSV"


class InputError(ValueError):
    """Input that cannot be turned into model input; the message names it and what is expected."""


def read_digit(path: Path) -> np.ndarray:
    """One image as a (28, 28) float32 array in [0, 1], light digit on dark."""
    try:
        with Image.open(path) as image:
            image.load()
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a decodable PNG/JPEG image ({exc})") from None
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return 1.0 - pixels if border.mean() > 0.5 else pixels


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no .png, .jpg or .jpeg files in this folder")
    return files


def read_idx_images(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        images = read_idx(path, expected_ndim=3)
    except IDXFormatError as exc:
        raise InputError(f"{exc}; expected {EXPECTED}") from None
    if images.shape[1:] != (SIZE, SIZE):
        raise InputError(f"{path}: images are {images.shape[1:]}, expected 28x28 MNIST digits")
    names = [f"{path.name}[{i}]" for i in range(len(images))]
    return names, images.astype(np.float32) / 255.0


def read_digits(path: Path) -> tuple[list[str], np.ndarray]:
    """(names, images (N, 1, 28, 28)) from a folder of images, one image or an IDX file."""
    if path.is_dir():
        files = image_files(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        files = [path]
    else:
        names, images = read_idx_images(path)
        return names, images[:, None]
    images = np.stack([read_digit(f) for f in files])
    return [f.name for f in files], images[:, None]


def read_rows(path: Path) -> pd.DataFrame:
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc})") from None
    if rows.empty:
        raise InputError(f"{path}: the CSV has a header but no rows")
    return rows


def read_input(path: Path) -> tuple[str, list[str] | None, np.ndarray | pd.DataFrame]:
    """("digits", names, images) or ("rows", None, DataFrame), by what ``path`` is."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected {EXPECTED}")
    if path.is_file() and path.suffix.lower() == ".csv":
        return "rows", None, read_rows(path)
    names, images = read_digits(path)
    return "digits", names, images
