"""Hostile inputs made on the spot (gzip and PNG bombs, a CSV of one endless line), running a
command under a memory limit (RLIMIT_AS for the child only, its peak resident memory read back
from ``wait4``), a scoring server that answers anything but predictions, and a client that
streams a request body and reads the answer as soon as it comes."""

from __future__ import annotations

import gzip
import http.client
import os
import resource
import select
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def write_long_line_csv(path: Path, size: int) -> Path:
    """A CSV header, then a line of ``size`` bytes with no line break: a sparse run of NUL
    bytes, so the file takes no disk space whatever ``size`` is."""
    header = b"age,bmi\n"
    with path.open("wb") as stream:
        stream.write(header)
        stream.truncate(len(header) + size)
    return path


# What a scoring server can answer instead of {"predictions": ...}: status, content type, body.
REPLIES = {
    "html": (200, "text/html", b"<!doctype html>\n<html><body><h1>Welcome to nginx!</h1>\n"),
    "not-json": (200, "application/json", b"predictions: 7 2 1\n"),
    "wrong-shape": (200, "application/json", b'{"predictions": [[0.1, 0.9]]}'),
    "no-predictions": (200, "application/json", b'{"outputs": "later"}'),
    "http-500": (500, "text/plain", b"Internal Server Error\nTraceback (most recent call last):"),
}
# Answered specially: the connection reset (RST) once the request is read; a body cut short of
# its Content-Length; a body of HUGE_REPLY bytes.
RESET, CUT_SHORT, HUGE = "reset", "cut-short", "huge"
HUGE_REPLY = 32 << 20


class _Impostor(BaseHTTPRequestHandler):
    """Answers POST /<reply>/invocations with the reply of that name."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        reply = self.path.strip("/").split("/")[0]
        if reply == RESET:  # closed at once with linger 0: an RST, not a FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the socket's last other reference: closing it closes the socket
            self.connection.close()
            return
        if reply in REPLIES:
            status, kind, body = REPLIES[reply]
            length = len(body)
        else:
            status, kind = 200, "application/json"
            body, length = b'{"predictions": [[', {CUT_SHORT: 1000, HUGE: HUGE_REPLY}[reply]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
            left = length - len(body) if reply == HUGE else 0
            while left > 0:
                self.wfile.write(b" " * min(left, 1 << 20))
                left -= 1 << 20
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def scoring_impostor(host: str = "127.0.0.1") -> Iterator[str]:
    """A real HTTP server (http.server in a thread) whose URL + ``/<reply>`` is a "scoring
    server" answering ``/invocations`` with that reply (REPLIES, RESET, CUT_SHORT, HUGE)."""
    server = ThreadingHTTPServer((host, 0), _Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Answer:
    """What a streamed POST got back, and how much of its body was sent before."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    sent: int


def post_streamed(
    host: str,
    port: int,
    path: str,
    pieces: Iterable[bytes],
    length: int | None = None,
    chunked: bool | None = None,
) -> Answer:
    """POST ``pieces`` as one JSON body with a Content-Length of ``length`` (none when None),
    chunked when ``chunked`` (by default when there is no ``length``; with a ``length`` too, the
    server must read it as chunked); like curl, stop sending as soon as the server answers or
    closes, then read the answer."""
    chunked = length is None if chunked is None else chunked
    sent = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        head += "" if length is None else f"Content-Length: {length}\r\n"
        head += "Transfer-Encoding: chunked\r\n" if chunked else ""
        sock.sendall(head.encode() + b"\r\n")
        try:
            for piece in pieces:
                if select.select([sock], [], [], 0)[0]:
                    break  # an answer (or the close) came before the body was sent
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: its answer is read below
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.headers, response.read(), sent)
