"""Reader for the IDX format that MNIST is distributed in.

An IDX file is: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one big-endian uint32 per dimension, then the data. Files may be gzip'd.
Every check names the file and the problem, so a corrupt download never turns into a
silently wrong tensor.

The header is read first and the data only when its size is within a limit: a small
gzip'd file can claim (and inflate to) gigabytes. The limit is ``max_bytes`` or the
environment variable ``DATA_LOADER_MAX_IDX_MB`` (MiB), default 128 MiB; the full MNIST
training images are 45 MiB.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

UNSIGNED_BYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
MAX_MB_ENV = "DATA_LOADER_MAX_IDX_MB"
DEFAULT_MAX_MB = 128
MIB = 1 << 20


class IDXFormatError(ValueError):
    """An IDX file that cannot be read as what it claims to be."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class IDXSizeLimitError(IDXFormatError):
    """An IDX file whose header announces more data than the size limit allows."""


def mib_limit(variable: str, default_mb: int) -> int:
    """A size limit in bytes from the environment ``variable`` (whole MiB >= 1), else
    ``default_mb`` MiB; ValueError for another value."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default_mb * MIB
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{variable} must be a whole number of MiB >= 1, got {text!r}")
    return int(text) * MIB


def max_idx_bytes() -> int:
    """The data size limit from ``DATA_LOADER_MAX_IDX_MB``, else 128 MiB."""
    return mib_limit(MAX_MB_ENV, DEFAULT_MAX_MB)


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _read(stream: BinaryIO, path: Path, size: int) -> bytes:
    try:
        return stream.read(size)
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXFormatError(path, f"corrupt or truncated gzip data ({exc})") from exc


def _read_into(stream: BinaryIO, path: Path, view: memoryview, chunk: int = 16 * MIB) -> int:
    """Fill ``view`` in chunks (one copy of the data in memory, not two); return bytes read."""
    filled = 0
    while filled < len(view):
        piece = _read(stream, path, min(chunk, len(view) - filled))
        if not piece:
            break
        view[filled : filled + len(piece)] = piece
        filled += len(piece)
    return filled


def read_idx(path: str | Path, expected_ndim: int, max_bytes: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``expected_ndim`` dimensions into a numpy array.

    A file whose header announces more than ``max_bytes`` of data (default: see the module
    docstring) is refused before its data is read or inflated.
    """
    path = Path(path)
    limit = max_idx_bytes() if max_bytes is None else max_bytes
    with _open(path) as stream:
        head = _read(stream, path, 4)
        if len(head) < 4:
            raise IDXFormatError(path, f"truncated: {len(head)} bytes, too short for an IDX header")
        zeros, type_code, ndim = struct.unpack(">HBB", head)
        expected_magic = (UNSIGNED_BYTE << 8) | expected_ndim
        if zeros != 0 or type_code != UNSIGNED_BYTE or ndim != expected_ndim:
            raise IDXFormatError(
                path,
                f"wrong magic number {struct.unpack('>I', head)[0]}, expected {expected_magic} "
                f"(unsigned bytes, {expected_ndim} dimension(s))",
            )
        dims = _read(stream, path, 4 * ndim)
        if len(dims) < 4 * ndim:
            raise IDXFormatError(path, "truncated: the header ends before its dimension sizes")
        shape = struct.unpack(f">{ndim}I", dims)
        expected_size = math.prod(shape)  # Python ints: no overflow on hostile sizes
        if expected_size > limit:
            raise IDXSizeLimitError(
                path,
                f"header says {shape} = {expected_size:,} bytes, more than the limit of "
                f"{limit:,} bytes ({limit / MIB:g} MiB); raise it with {MAX_MB_ENV}=<MiB> "
                "(or max_bytes=) if the file is trusted",
            )
        data = bytearray(expected_size)
        filled = _read_into(stream, path, memoryview(data))
        if filled < expected_size:
            raise IDXFormatError(
                path,
                f"truncated: header says {shape} = {expected_size} bytes, file holds {filled}",
            )
        if _read(stream, path, 1):
            raise IDXFormatError(
                path, f"trailing data: header says {shape} = {expected_size} bytes, file holds more"
            )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write a uint8 array as IDX (gzip'd when ``compress`` or when the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UNSIGNED_BYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
