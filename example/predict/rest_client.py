"""Post digit images to a model served by `mlflow models serve` and print the digits.

    make serve MODEL=models:/mnist@champion          # in one terminal (port 5003)
    python -m mlflow_project_store.predict.rest_client http://127.0.0.1:5003 digits/

The images are read like the predict CLI reads them (folder, PNG/JPEG file or IDX file),
checked first, and sent --batch-size at a time as JSON, {"inputs": [...]}, to
<server>/invocations. The client loads no model: the server does (see `make serve`).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from mlflow_project_store.project_tools.cli import OneLineParser, number

from .inputs import InputError, open_input


class ServerError(Exception):
    """The scoring server is down or answered with an error."""


def invocations(server: str, images: np.ndarray, timeout: float = 120) -> np.ndarray:
    """POST ``images`` (N, 1, 28, 28) to ``server``/invocations; return the (N, 10) logits."""
    url = f"{server.rstrip('/')}/invocations"
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().splitlines()[:1]
        raise ServerError(f"{url} answered HTTP {exc.code}: {' '.join(detail)[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"scoring server {server} is unreachable ({reason})") from None
    return np.asarray(answer["predictions"], dtype=np.float32)


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
