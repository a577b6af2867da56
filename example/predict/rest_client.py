"""Post digit images to a model served by `mlflow models serve` and print the digits.

    make serve MODEL=models:/mnist@champion          # in one terminal (port 5003)
    python -m mlflow_project_store.predict.rest_client http://127.0.0.1:5003 digits/

The images are read like the predict CLI reads them (folder, PNG/JPEG file or IDX file),
checked first, and sent --batch-size at a time as JSON, {"inputs": [...]}, to
<server>/invocations. The client loads no model: the server does (see `make serve`). An answer
that is not {"predictions": N rows of 10 scores} (an HTML page, other JSON, an HTTP error, a
connection cut short, more than 16 MiB) is one line naming the URL and the start of what came.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from mlflow_project_store.project_tools.cli import OneLineParser, number

from .inputs import InputError, open_input

# The logits of 4096 images (the largest --batch-size) are about 1 MB of JSON.
MAX_REPLY = 16 << 20
SHOWN = 200  # characters of an unexpected reply that an error line quotes


class ServerError(Exception):
    """The scoring server is down or answered with an error."""


def shown(data: bytes) -> str:
    """The start of ``data`` as one line: whitespace folded, cut at SHOWN characters."""
    text = " ".join(data[: SHOWN * 4].decode(errors="replace").split())
    return repr(text[:SHOWN] + ("..." if len(text) > SHOWN else ""))


def post(url: str, body: bytes, timeout: float) -> tuple[str, bytes]:
    """POST ``body`` as JSON to ``url``: the reply's content type and at most MAX_REPLY + 1
    of its bytes."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = response.read(MAX_REPLY + 1)
            if len(reply) <= MAX_REPLY and response.length:  # short of its Content-Length
                raise http.client.IncompleteRead(reply, response.length)
            return response.headers.get_content_type(), reply
    except urllib.error.HTTPError as exc:
        detail = shown(exc.read(SHOWN * 4))
        raise ServerError(f"{url} answered HTTP {exc.code} {exc.reason}: {detail}") from None
    except urllib.error.URLError as exc:
        server = url.removesuffix("/invocations")
        raise ServerError(f"scoring server {server} is unreachable ({exc.reason})") from None
    except http.client.IncompleteRead as exc:
        got, announced = len(exc.partial), len(exc.partial) + (exc.expected or 0)
        raise ServerError(
            f"{url} closed the connection after {got:,} of the {announced:,} bytes it announced: "
            f"{shown(exc.partial)}"
        ) from None
    except (http.client.HTTPException, OSError) as exc:  # after the request was sent
        what = str(exc) or type(exc).__name__
        raise ServerError(f"{url} gave no complete answer: {what}") from None


def logits(url: str, kind: str, reply: bytes, count: int) -> np.ndarray:
    """The (count, 10) logits of a reply {"predictions": [[...10 numbers], ...]}."""
    if len(reply) > MAX_REPLY:
        raise ServerError(f"{url} answered more than {MAX_REPLY:,} bytes: {shown(reply)}")
    try:
        answer = json.loads(reply)
    except ValueError:  # UnicodeDecodeError too
        raise ServerError(f"{url} answered {kind}, not JSON: {shown(reply)}") from None
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    try:
        array = np.asarray(predictions, dtype=np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (count, 10):
        raise ServerError(
            f'{url} answered JSON without {{"predictions": {count} rows of 10 digit scores}}: '
            f"{shown(reply)}"
        )
    return array


def invocations(server: str, images: np.ndarray, timeout: float = 120) -> np.ndarray:
    """POST ``images`` (N, 1, 28, 28) to ``server``/invocations; return the (N, 10) logits."""
    url = f"{server.rstrip('/')}/invocations"
    kind, reply = post(url, json.dumps({"inputs": images.tolist()}).encode(), timeout)
    return logits(url, kind, reply, len(images))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="rest_client", description=__doc__.splitlines()[0])
    parser.add_argument("server", help="the scoring server, e.g. http://127.0.0.1:5003")
    parser.add_argument("input", type=Path, help="digit images: a folder, a PNG/JPEG or IDX file")
    parser.add_argument(
        "--batch-size", type=number(int, 1, 4096), default=256, help="images per request"
    )
    args = parser.parse_args(argv)
    try:
        source = open_input(args.input)
        if source.kind != "digits":
            raise InputError(f"{args.input}: a CSV table, expected digit images")
        for names, images in source.batches(args.batch_size):
            logits = invocations(args.server, images)
            for name, digit in zip(names or [], logits.argmax(axis=1), strict=True):
                print(f"{name}  {digit}", flush=True)
    except (InputError, ServerError) as exc:
        print(f"rest_client: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
