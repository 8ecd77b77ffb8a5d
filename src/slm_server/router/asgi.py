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
from slm_server.router.body_deadlines import BodyDeadlines
from slm_server.router.errors import BodyStalled, BodyTooLarge, RouterError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
# A request body: a bytearray when it was filled in place (see read_body); read-only.
Body = bytes | bytearray

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]

# On an answer's last body message: it ends with an error after its status line (a
# stream's error event), so the answer failed whatever its status said. Servers ignore
# keys they do not know; the metrics count such an answer as a 5xx.
ENDED_IN_ERROR = "slm.ended_in_error"

# A scope extension: a function taking a callback to be called once, should the client
# leave before its answer is complete (None: no more). The router's own server offers
# it; with it, a request needs no task of its own waiting on ``receive`` for the
# ``http.disconnect`` that says so.
WATCH_DISCONNECT = "slm.watch_disconnect"
# A scope extension: a function writing a piece of a streamed answer's body, more to
# follow, at once; it returns False once the client has fallen behind (a send then
# gives what to wait on). A streamed event then costs a call, not a message and a send.
WRITE_PIECE = "slm.write_piece"

# Bodies of declared length above this are read into one buffer (see read_body).
_FILL_IN_PLACE_ABOVE = 64 * 1024


class ClientDisconnected(Exception):
    """The client went away before the request body was read."""


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    budget: BodyBudget,
    deadlines: BodyDeadlines,
    task: asyncio.Task[object] | None = None,
) -> Body:
    """The whole request body; BodyTooLarge as soon as it exceeds ``limit`` bytes.

    Its bytes are taken from ``budget`` (the caller gives ``len(body)`` back once done
    with it): a declared length at once, so that an upload that cannot fit is refused
    before it is read, and a chunked body's bytes as they arrive. On any failure,
    including the client leaving mid-upload, whatever was taken is given back here.

    A large body of declared length is filled into one bytearray of that size: joining
    the pieces instead held it twice for a moment, which with several uploads at once
    was a third of the router's peak memory.

    The body is bounded in time from its first receive, whatever its size or framing
    (BodyStalled, 408): nothing may come for ``deadlines.idle_timeout_s``, and after
    that long it must have arrived at ``deadlines.min_rate`` bytes/s on average.
    Otherwise its bytes, declared ones included, would stay taken for as long as the
    client lingers. ``task`` is the one reading (default: the current one), as the
    deadlines cancel it.
    """
    declared = header(scope, b"content-length")
    taken = 0
    filled: bytearray | None = None
    if declared is not None and declared.isdigit():
        taken = int(declared)
        if taken > limit:
            raise BodyTooLarge(_too_large_message(limit))
        budget.take(taken, taken)
        if taken > _FILL_IN_PLACE_ABOVE:
            filled = bytearray(taken)
    chunks: list[bytes] = []
    size = 0
    task = deadlines.start(task)
    cancelling = task.cancelling()
    grace_ends = -1.0  # the first deadline: read only for a body in several parts
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                start = size
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(_too_large_message(limit))
                if size > taken:
                    budget.take(size - taken, size)
                    taken = size
                if filled is not None:
                    filled[start:size] = chunk
                else:
                    chunks.append(chunk)
            if not message.get("more_body", False):
                break
            # The common small body is whole in its first part and never gets here.
            if grace_ends < 0:
                grace_ends = deadlines.first_deadline(task)
            deadlines.move(task, grace_ends, size)
    except asyncio.CancelledError:
        budget.give_back(taken)
        # Ran out of time, unless something else cancelled the request as well.
        if deadlines.stop(task) and task.uncancel() <= cancelling:
            raise BodyStalled(_stalled_message(size, deadlines)) from None
        raise
    except BaseException:
        budget.give_back(taken)
        deadlines.stop(task)
        raise
    deadlines.stop(task)
    if taken > size:  # shorter than declared (the server checks; this keeps the count exact)
        budget.give_back(taken - size)
    if filled is not None:
        del filled[size:]
        return filled
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _stalled_message(size: int, deadlines: BodyDeadlines) -> str:
    return (
        f"the request body stopped arriving or came too slowly ({size} bytes received): "
        f"nothing may come for {deadlines.idle_timeout_s:g}s, and after that the body "
        f"must arrive at {deadlines.min_rate / 1024:g} KiB/s on average"
    )


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
