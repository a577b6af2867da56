"""Read what the predict example feeds a model: digit images, an MNIST IDX file or CSV rows.

Digits become MNIST's tensor layout: float32 ``(N, 1, 28, 28)``, pixels in [0, 1], a light
digit on a dark background. Any decodable image works: colour is converted to grayscale,
other sizes are resized to 28x28, and a dark digit on a light background (a scan, a
drawing) is inverted, judged by the image's border.

``open_input`` checks the whole input before any model is loaded (headers and sizes only, so
it is quick); ``Input.batches`` then yields it ``batch_size`` at a time, so memory stays
bounded whatever the input size. An IDX file is held once as bytes, under the data loader's
size limit (``DATA_LOADER_MAX_IDX_MB``); a CSV row is refused past ``PREDICT_MAX_CSV_ROW_MB``
(predict.limits) as it is read. Only regular files and folders are read: a named pipe would
block the first read forever, a device such as /dev/zero never ends.
"""

from __future__ import annotations

import io
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mlflow_project_store.data_loader import IDXFormatError, IDXSizeLimitError, read_idx
from mlflow_project_store.layout import FILE_TYPES

from .limits import CSV_ROW_ENV, DEFAULT_CSV_ROW_MB, describe, limit_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = 28
# A digit needs no more: a 20000x20000 PNG of a few KB would decode to 400 MB or more.
MAX_PIXELS = 8192 * 8192
EXPECTED = "a folder of PNG/JPEG digit images, a PNG/JPEG image, an MNIST IDX image file or a CSV"
QUOTE, LF, CR = b'"'[0], b"\n"[0], b"\r"[0]

Batch = tuple[list[str] | None, "np.ndarray | pd.DataFrame"]


class InputError(ValueError):
    """Input that cannot be turned into model input; the message names it and what is expected."""


def _problem(path: Path, exc: Exception) -> InputError:
    if isinstance(exc, Image.DecompressionBombError):
        return InputError(f"{path}: refused, too large for a digit image ({exc})")
    return InputError(f"{path}: not a decodable PNG/JPEG image ({exc})")


def require_regular(path: Path, expected: str) -> None:
    """Refuse anything but a regular file (links followed) before it is opened."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        what = FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")
        raise InputError(f"{path}: is {what}, not a regular file; expected {expected}")


def check_image(path: Path) -> None:
    """Open the header only: a decodable format whose size is within MAX_PIXELS."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 million pixels on: MAX_PIXELS, lower, refuses those anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise _problem(path, exc) from None
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{path}: {width}x{height} pixels, more than the {MAX_PIXELS:,} (8192x8192) an "
            "input image may have; scale it down to a digit-sized image"
        )


def read_digit(path: Path) -> np.ndarray:
    """One image as a (28, 28) float32 array in [0, 1], light digit on dark."""
    check_image(path)
    try:
        with Image.open(path) as image:
            image.load()
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise _problem(path, exc) from None
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return 1.0 - pixels if border.mean() > 0.5 else pixels


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no .png, .jpg or .jpeg files in this folder")
    for file in files:
        require_regular(file, "a PNG/JPEG image file")
    return files


def read_idx_images(path: Path) -> np.ndarray:
    """The uint8 images (N, 28, 28) of an IDX file, within the loader's size limit."""
    try:
        images = read_idx(path, expected_ndim=3)
    except IDXSizeLimitError as exc:
        raise InputError(str(exc)) from None
    except IDXFormatError as exc:
        raise InputError(f"{exc}; expected {EXPECTED}") from None
    except ValueError as exc:  # a bad DATA_LOADER_MAX_IDX_MB
        raise InputError(str(exc)) from None
    if images.shape[1:] != (SIZE, SIZE):
        raise InputError(f"{path}: images are {images.shape[1:]}, expected 28x28 MNIST digits")
    if not len(images):
        raise InputError(f"{path}: the IDX file holds no images")
    return images


@dataclass
class Input:
    """A checked input: ``kind`` is "digits" or "rows"."""

    path: Path
    kind: str
    files: list[Path] | None = None
    idx: np.ndarray | None = None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """(names, float32 images (n, 1, 28, 28)) or (None, a DataFrame of rows) per batch."""
        if self.kind == "rows":
            yield from ((None, rows) for rows in _csv_chunks(self.path, batch_size))
        elif self.idx is not None:
            for start in range(0, len(self.idx), batch_size):
                chunk = self.idx[start : start + batch_size]
                names = [f"{self.path.name}[{i}]" for i in range(start, start + len(chunk))]
                yield names, (chunk.astype(np.float32) / 255.0)[:, None]
        else:
            assert self.files is not None
            for start in range(0, len(self.files), batch_size):
                files = self.files[start : start + batch_size]
                yield [f.name for f in files], np.stack([read_digit(f) for f in files])[:, None]


class BoundedRows(io.RawIOBase):
    """A CSV file's bytes as pandas reads them, refusing a row longer than ``limit`` bytes
    once that many are read: pandas holds a row whole while it parses it. A row ends at a line
    break outside double quotes (a quoted field may hold line breaks), as pandas' default
    dialect reads it."""

    def __init__(self, path: Path, stream: io.BufferedReader, limit: int) -> None:
        super().__init__()
        self.path, self.stream, self.limit = path, stream, limit
        self.row = 0  # bytes of the row being read, so far
        self.quoted = 0  # 1 inside a quoted field

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        size = self.stream.readinto(buffer)
        if size:
            self._count(np.frombuffer(buffer, np.uint8, size))
        return size

    def _count(self, data: np.ndarray) -> None:
        quoted = (np.cumsum(data == QUOTE) + self.quoted) % 2
        ends = np.flatnonzero(((data == LF) | (data == CR)) & (quoted == 0))
        self.quoted = int(quoted[-1])
        finished = 0  # the longest row that ends in ``data``
        if ends.size:
            finished = max(self.row + int(ends[0]) + 1, int(np.diff(ends).max(initial=0)))
            self.row = len(data) - 1 - int(ends[-1])
        else:
            self.row += len(data)
        if max(finished, self.row) > self.limit:
            raise InputError(
                f"{self.path}: a CSV row longer than {describe(self.limit, CSV_ROW_ENV)} if "
                "the file is trusted"
            )


@contextmanager
def _csv_stream(path: Path) -> Iterator[BoundedRows]:
    """``path`` opened for pandas through BoundedRows; its parse errors as one InputError."""
    try:
        limit = limit_bytes(CSV_ROW_ENV, DEFAULT_CSV_ROW_MB)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with path.open("rb") as stream:
        try:
            yield BoundedRows(path, stream, limit)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV table ({exc})") from None


def _csv_chunks(path: Path, size: int) -> Iterator[pd.DataFrame]:
    with _csv_stream(path) as stream:
        yield from pd.read_csv(stream, chunksize=size)


def check_rows(path: Path) -> None:
    """A CSV with a header and at least one row (the first rows are read, not the file)."""
    with _csv_stream(path) as stream:
        head = pd.read_csv(stream, nrows=5)
    if head.empty:
        raise InputError(f"{path}: the CSV has a header but no rows")


def open_input(path: Path) -> Input:
    """Check ``path`` and say what it is; nothing large is decoded yet."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected {EXPECTED}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        require_regular(path, "a CSV file")
        check_rows(path)
        return Input(path, "rows")
    if path.is_dir():
        files = image_files(path)
    else:
        require_regular(path, EXPECTED)
        if suffix not in IMAGE_SUFFIXES:
            return Input(path, "digits", idx=read_idx_images(path))
        files = [path]
    for file in files:
        check_image(file)
    return Input(path, "digits", files=files)
