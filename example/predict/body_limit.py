"""An ASGI middleware that refuses a request body over a size limit before it is read.

MLflow's scoring app reads the whole body of a request into memory (``await request.body()``)
and then parses it, whatever its size; neither MLflow nor uvicorn has a setting that bounds it.
BodyLimit answers a request whose Content-Length is over the limit at once, and reads any other
body (chunked, or shorter than it claims) only up to the limit. Either way the answer is HTTP
413 with one line of JSON naming the limit, in MLflow's error form, and the connection is
closed, so the rest of the body is never read. A body within the limit reaches the app
unchanged, once it has all come (as the app itself would read it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .limits import BODY_ENV, describe

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]


def declared_length(scope: Message) -> int | None:
    """The request's Content-Length, None when it has none (the server has checked its form)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value)
    return None


class BodyLimit:
    """Wrap ``app``: a request body over ``limit`` bytes gets 413 and is not read further."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.limit:
            await self.refuse(send)
            return
        # Counted whatever the Content-Length says: with Transfer-Encoding too, the server reads
        # the body as chunked.
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.limit:
                await self.refuse(send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay(messages, receive), send)

    async def refuse(self, send: Send) -> None:
        message = f"request body over {describe(self.limit, BODY_ENV)} where the server starts"
        body = json.dumps({"error_code": "RESOURCE_LIMIT_EXCEEDED", "message": message}) + "\n"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``messages`` back first, then whatever ``receive`` gives."""
    pending = iter(messages)

    async def receive_again() -> Message:
        return next(pending, None) or await receive()

    return receive_again
