"""The few ASGI primitives the router needs: read a bounded body, send a response.

The router is a plain ASGI app rather than a framework app because the hot
path (read ``model``, forward bytes) should cost as little as possible; the
helpers here keep that path short and the handlers readable.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from slm_server.router.errors import BodyTooLarge, RouterError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class ClientDisconnected(Exception):
    """The client went away before the request body was read."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as it exceeds ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(_too_large_message(limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(_too_large_message(limit))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large_message(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes (router.max_body_mb)"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case), decoded."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_response(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = JSON_HEADERS
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any) -> None:
    await send_response(send, status, json.dumps(payload).encode())


async def send_error(send: Send, error: RouterError, body: bytes | None = None) -> None:
    """``error`` in the OpenAI envelope, unless ``body`` gives it in another dialect's shape."""
    headers = [*JSON_HEADERS, *error.headers()]
    await send_response(send, error.status, body or error.body(), headers)
