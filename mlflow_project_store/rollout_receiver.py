"""``make rollout-receiver``: roll the served model whenever its ``champion`` alias moves.

    WEBHOOK_SECRET=... make rollout-receiver MODEL=models:/mnist@champion REGISTRY=... \\
        KUBE_CONTEXT=... [DRY_RUN=1] [RECEIVER_HOST=127.0.0.1 RECEIVER_PORT=5055]
    python -m mlflow_project_store.rollout_receiver     (settings from the environment)

An HTTP server for the Model Registry's webhooks (MLflow 3, SQL stores): register it for the
event ``model_version_alias.created`` with the same secret (ready_for_mlflow/README.md). Each
delivery is checked as MLflow signs it (mlflow/webhooks/delivery.py): the header
``X-MLflow-Signature`` must be ``v1,`` and the base64 HMAC-SHA256, keyed with WEBHOOK_SECRET, of
``<X-MLflow-Delivery-Id>.<X-MLflow-Timestamp>.<body>`` (compared in constant time); the
timestamp must be within TOLERANCE seconds of now, and a delivery id is accepted once. A missing
or bad header or signature, an old timestamp or a replayed delivery is answered 4xx and logged
in one line; nothing is rolled.

An accepted delivery is answered 202 at once (MLflow waits 30 s at most) and, when it moved the
followed alias of the followed model, queued for :func:`rollout.roll`, which resolves the alias
again when its turn comes: deliveries that arrive late, twice or out of order end on the version
the alias names by then, and a version already deployed is left as it is. Moving the alias back
(`make promote`, or setting it on an older version) rolls back the same way, reusing that
version's image. A rollout that fails (the build, the push, the cluster) is one logged line and
leaves the deployed version serving. Other events, aliases and models are answered 200 and
ignored. The secret comes from the environment only, never from a command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlflow.webhooks.constants import (
    WEBHOOK_DELIVERY_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_SIGNATURE_VERSION,
    WEBHOOK_TIMESTAMP_HEADER,
)

from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.project_tools.lifecycle import raise_once
from mlflow_project_store.project_tools.redaction import redact
from mlflow_project_store.rollout import RolloutError, Target, checked_target, roll
from mlflow_project_store.serving_image import MODEL_URI, ServingImageError

PROG = "make rollout-receiver"
EVENT = ("model_version_alias", "created")
TOLERANCE = 300  # seconds a delivery's timestamp may be off from this machine's clock
MAX_BODY = 64 * 1024
# What an `mlflow server` needs to deliver webhooks to a receiver on its own machine over plain
# HTTP, as in the tests and `make server` trials; a production server keeps MLflow's defaults
# (https only, no private address). MLFLOW_WEBHOOK_CACHE_TTL=0: a webhook just registered gets
# the next event (the server otherwise keeps its list of webhooks for 60 s).
LOCAL_DELIVERY = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "0",
}


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} rollout-receiver: {redact(message)}", file=sys.stderr, flush=True)


def signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> bytes:
    """MLflow's signature of a delivery: ``v1,`` + base64(HMAC-SHA256(id.timestamp.body))."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest())
    return f"{WEBHOOK_SIGNATURE_VERSION},".encode() + digest


class Refused(Exception):
    """A delivery that is not acted on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Deliveries:
    """The delivery ids accepted within the tolerance window: a second one is a replay."""

    def __init__(self, tolerance: float = TOLERANCE) -> None:
        self.tolerance = tolerance
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def first(self, delivery_id: str, now: float) -> bool:
        with self.lock:
            # Older ids cannot come back: their timestamps are outside the window by now.
            self.seen = {k: t for k, t in self.seen.items() if now - t <= 2 * self.tolerance}
            if delivery_id in self.seen:
                return False
            self.seen[delivery_id] = now
            return True


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    deliveries: Deliveries,
    now: float | None = None,
) -> str:
    """The delivery id of a signed, fresh, first delivery; else raise :class:`Refused`."""
    now = time.time() if now is None else now
    delivery_id = headers.get(WEBHOOK_DELIVERY_ID_HEADER) or ""
    timestamp = headers.get(WEBHOOK_TIMESTAMP_HEADER) or ""
    given = headers.get(WEBHOOK_SIGNATURE_HEADER) or ""
    for header, value in (
        (WEBHOOK_DELIVERY_ID_HEADER, delivery_id),
        (WEBHOOK_TIMESTAMP_HEADER, timestamp),
        (WEBHOOK_SIGNATURE_HEADER, given),
    ):
        if not value:
            raise Refused(400, f"no {header} header: not a signed MLflow webhook delivery")
    expected = signature(secret, delivery_id, timestamp, body)
    # Several space-separated signatures may be sent while a secret is rotated.
    if not any(hmac.compare_digest(expected, sig.encode()) for sig in given.split()):
        raise Refused(401, f"{WEBHOOK_SIGNATURE_HEADER} does not match: wrong secret or body")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > deliveries.tolerance:
        raise Refused(
            400,
            f"{WEBHOOK_TIMESTAMP_HEADER} {timestamp!r} is not within {deliveries.tolerance:g} s "
            "of now: a replayed or delayed delivery",
        )
    if not deliveries.first(delivery_id, now):
        raise Refused(409, f"delivery {delivery_id} was received before: a replay")
    return delivery_id


class Receiver(ThreadingHTTPServer):
    """The webhook endpoint and the one worker that rolls out, one rollout at a time."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], secret: bytes, model: str, alias: str, target: Target
    ) -> None:
        super().__init__(address, Handler)
        self.secret, self.model, self.alias, self.target = secret, model, alias, target
        self.deliveries = Deliveries()
        self.pending: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self.work, daemon=True).start()

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model}@{self.alias}"

    def handle_delivery(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """(HTTP status, what happened) for one delivery."""
        delivery_id = verify(self.secret, headers, body, self.deliveries)
        try:
            payload = json.loads(body)
            event = (payload["entity"], payload["action"])
            data = payload["data"]
        except (ValueError, KeyError, TypeError):
            raise Refused(400, f"delivery {delivery_id}: not an MLflow webhook payload") from None
        moved = (data.get("name"), data.get("alias")) if isinstance(data, dict) else None
        if event != EVENT or moved != (self.model, self.alias):
            what = ".".join(map(str, event)) + (" of {}@{}".format(*moved) if moved else "")
            return 200, f"delivery {delivery_id}: {what} ignored: not {self.model}@{self.alias}"
        self.pending.put(delivery_id)
        return 202, (
            f"delivery {delivery_id}: {self.alias} of {self.model} moved to version "
            f"{data.get('version')}: rollout queued"
        )

    def work(self) -> None:
        while True:
            delivery_id = self.pending.get()
            try:
                log(f"delivery {delivery_id}: {roll(self.model_uri, self.target)}")
            except (ServingImageError, RolloutError) as exc:
                log(f"delivery {delivery_id}: rollout failed, nothing changed: {exc}")
            except SystemExit:  # a tool's one-line error, already printed
                log(f"delivery {delivery_id}: rollout failed, nothing changed")
            except Exception as exc:  # keep serving the next delivery
                log(f"delivery {delivery_id}: rollout failed, nothing changed: {exc!r}")
            finally:
                self.pending.task_done()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: object) -> None:
        pass  # one line per delivery, from do_POST

    def answer(self, status: int, message: str) -> None:
        data = (json.dumps({"message": message}) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            status, message = 413, f"a body of {MAX_BODY} bytes at most, with its Content-Length"
        else:
            body = self.rfile.read(int(length))
            try:
                status, message = self.server.handle_delivery(self.headers, body)
            except Refused as refused:
                status, message = refused.status, f"refused: {refused}"
        log(f"HTTP {status} from {self.client_address[0]}: {message}")
        self.answer(status, message)

    def do_GET(self) -> None:
        self.answer(405, "POST MLflow webhook deliveries here")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    env = os.environ
    secret = env.get("WEBHOOK_SECRET", "")
    if len(secret) < 16:
        fail(
            PROG,
            "export WEBHOOK_SECRET (16 characters or more): the secret the webhook was "
            "registered with",
            2,
        )
    model_uri = env.get("MODEL", "")
    found = MODEL_URI.fullmatch(model_uri)
    if found is None or found["alias"] is None:
        fail(PROG, f"MODEL={model_uri!r}: expected the alias to follow, models:/<name>@<alias>", 2)
    port = env.get("RECEIVER_PORT") or "5055"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        fail(PROG, f"RECEIVER_PORT={port!r}: expected a port number between 1 and 65535", 2)
    host = env.get("RECEIVER_HOST") or "127.0.0.1"
    try:
        target = checked_target(env)
        server = Receiver((host, int(port)), secret.encode(), found["name"], found["alias"], target)
    except RolloutError as exc:
        fail(PROG, str(exc), 1)
    except OSError as exc:
        fail(PROG, f"cannot listen on {host}:{port}: {exc.strerror}", 1)
    log(
        f"listening on http://{host}:{server.server_address[1]}/ for "
        f"model_version_alias.created of {model_uri}"
    )
    # SIGTERM (a pod stopped, `make` interrupted) ends it as Ctrl-C does, once: a second one
    # while it closes is ignored. A rollout under way is dropped before its manifest is written
    # or applied: what runs keeps running.
    raise_once(lambda signum: KeyboardInterrupt(), (signal.SIGTERM, signal.SIGINT))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
