"""Hostile inputs made on the spot (gzip and PNG bombs) and running a command under a memory
limit: RLIMIT_AS for the child only, its peak resident memory read back from ``wait4``."""

from __future__ import annotations

import gzip
import os
import resource
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

# The file: a valid header and 255,102 images of zeros, 194 KB gzip'd, 200 MB inflated.
BOMB_IMAGES = 255_102
CHUNK = 16 << 20


def write_idx_bomb(path: Path, images: int = BOMB_IMAGES, side: int = 28) -> Path:
    """A gzip'd IDX image file of ``images`` blank images, written without holding them."""
    with gzip.open(path, "wb", compresslevel=9) as stream:
        stream.write(struct.pack(">HBB3I", 0, 0x08, 3, images, side, side))
        left = images * side * side
        zeros = bytes(min(CHUNK, left))
        while left:
            stream.write(zeros[: min(CHUNK, left)])
            left -= min(CHUNK, left)
    return path


def write_labels(path: Path, count: int) -> Path:
    with gzip.open(path, "wb") as stream:
        stream.write(struct.pack(">HBBI", 0, 0x08, 1, count) + bytes(count))
    return path


def write_png_bomb(path: Path, side: int = 20_000) -> Path:
    """A real ``side`` x ``side`` grayscale PNG of zeros (a few hundred KB, 400 MB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    rows = bytes((side + 1) * 100)  # each row: filter byte 0, then the pixels
    data = b"".join(compressor.compress(rows) for _ in range(side // 100))
    data += compressor.compress(bytes((side + 1) * (side % 100))) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


@dataclass
class Limited:
    """What a command run under a memory limit did."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    seconds: float


def run_limited(
    command: list[str],
    address_space: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> Limited:
    """Run ``command`` with RLIMIT_AS = ``address_space`` bytes; its output and peak RSS."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    out, err = (cwd or Path.cwd()) / ".stdout", (cwd or Path.cwd()) / ".stderr"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=stdout, stderr=stderr, preexec_fn=limit
        )
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Limited(
        process.returncode,
        out.read_text(),
        err.read_text(),
        usage.ru_maxrss * 1024,
        time.monotonic() - started,
    )
