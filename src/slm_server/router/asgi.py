"""The few ASGI primitives the router needs: read a bounded body, send a response.

The router is a plain ASGI app rather than a framework app because the hot
path (read ``model``, forward bytes) should cost as little as possible; the
helpers here keep that path short and the handlers readable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from slm_server.router.body_budget import BodyBudget
from slm_server.router.errors import BodyStalled, BodyTooLarge, RouterError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
# A request body: a bytearray when it was filled in place (see read_body); read-only.
Body = bytes | bytearray

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]

# Bodies of declared length above this are read into one buffer (see read_body).
_FILL_IN_PLACE_ABOVE = 64 * 1024

# How long a body may stop arriving before the request is ended: far longer than any
# pause of a live upload, short enough that a stalled one gives its bytes back.
BODY_IDLE_TIMEOUT_S = 30.0


class ClientDisconnected(Exception):
    """The client went away before the request body was read."""


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    budget: BodyBudget,
    idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
) -> Body:
    """The whole request body; BodyTooLarge as soon as it exceeds ``limit`` bytes.

    Its bytes are taken from ``budget`` (the caller gives ``len(body)`` back once done
    with it): a declared length at once, so that an upload that cannot fit is refused
    before it is read, and a chunked body's bytes as they arrive. On any failure,
    including the client leaving mid-upload, whatever was taken is given back here.

    A large body of declared length is filled into one bytearray of that size: joining
    the pieces instead held it twice for a moment, which with several uploads at once
    was a third of the router's peak memory.

    A body that stops arriving for ``idle_timeout_s`` is BodyStalled (408): its bytes,
    declared ones included, would otherwise stay taken for as long as the client
    lingers. A small body, whole in its first part, is read without the timer.
    """
    declared = header(scope, b"content-length")
    taken = 0
    filled: bytearray | None = None
    if declared is not None and declared.isdigit():
        taken = int(declared)
        if taken > limit:
            raise BodyTooLarge(_too_large_message(limit))
        budget.take(taken)
        if taken > _FILL_IN_PLACE_ABOVE:
            filled = bytearray(taken)
    chunks: list[bytes] = []
    size = 0
    timed = filled is not None
    try:
        while True:
            message = await _within(receive, idle_timeout_s) if timed else await receive()
            timed = True
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                start = size
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(_too_large_message(limit))
                if size > taken:
                    budget.take(size - taken)
                    taken = size
                if filled is not None:
                    filled[start:size] = chunk
                else:
                    chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        budget.give_back(taken)
        raise
    if taken > size:  # shorter than declared (the server checks; this keeps the count exact)
        budget.give_back(taken - size)
    if filled is not None:
        del filled[size:]
        return filled
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _within(receive: Receive, idle_timeout_s: float) -> Message:
    try:
        async with asyncio.timeout(idle_timeout_s):
            return await receive()
    except TimeoutError:
        raise BodyStalled(
            f"the request body stopped arriving: nothing came for {idle_timeout_s:g}s"
        ) from None


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
