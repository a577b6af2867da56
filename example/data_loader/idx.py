"""Reader for the IDX format that MNIST is distributed in.

An IDX file is: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one big-endian uint32 per dimension, then the data. Files may be gzip'd.
Every check names the file and the problem, so a corrupt download never turns into a
silently wrong tensor.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

UNSIGNED_BYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file that cannot be read as what it claims to be."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def read_bytes(path: Path) -> bytes:
    """Return the file's bytes, gunzipped when the file starts with the gzip magic."""
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise IDXFormatError(path, f"corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``expected_ndim`` dimensions into a numpy array."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(path, f"truncated: {len(data)} bytes, too short for an IDX header")
    zeros, type_code, ndim = struct.unpack(">HBB", data[:4])
    expected_magic = (UNSIGNED_BYTE << 8) | expected_ndim
    if zeros != 0 or type_code != UNSIGNED_BYTE or ndim != expected_ndim:
        magic = struct.unpack(">I", data[:4])[0]
        raise IDXFormatError(
            path,
            f"wrong magic number {magic}, expected {expected_magic} "
            f"(unsigned bytes, {expected_ndim} dimension(s))",
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(path, "truncated: the header ends before its dimension sizes")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = int(np.prod(shape))
    body = len(data) - header_size
    if body != expected_size:
        state = "truncated" if body < expected_size else "trailing data"
        raise IDXFormatError(
            path, f"{state}: header says {shape} = {expected_size} bytes, file holds {body}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


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
