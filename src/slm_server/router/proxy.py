"""Forwarding one request to a backend and its answer back to the client.

Bytes pass through untouched: the request body as the client sent it (unless
the caller changed it on purpose) and the response body as the backend wrote
it. Server-sent events are relayed one read at a time, never collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from slm_server.router.asgi import Headers, Receive, Send, send_response
from slm_server.router.errors import (
    BackendTimeout,
    BackendUnavailable,
    BadGateway,
    error_body,
)
from slm_server.router.routing import Backend
from slm_server.router.stopwatch import Stopwatch
from slm_server.upstream import (
    ConnectFailed,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)

# A backend that is down is usually being (re)started; a few seconds is a fair hint.
UNAVAILABLE_RETRY_AFTER_S = 5

# Kept below the idle keep-alive timeout of llama-server (5 s) so that the pool
# never hands out a connection the backend is about to close.
_KEEPALIVE_TIMEOUT_S = 4.0

SSE_HEADERS: Headers = [(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]


def new_upstream_pool() -> UpstreamPool:
    """The HTTP client for backends: pooled keep-alive, bodies left exactly as sent."""
    return UpstreamPool(keepalive_s=_KEEPALIVE_TIMEOUT_S)


def connect_failure(exc: ConnectFailed) -> str:
    """Why a connection to a backend failed, in the words users search for."""
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "Connection refused - backend not running"
    return str(exc.os_error)


def forwarded_request_headers(raw: Headers) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        if name not in _NOT_FORWARDED:
            headers[name] = value.decode("latin-1")
    # Compression would delay every SSE chunk behind the compressor's buffer.
    headers["accept-encoding"] = "identity"
    headers.setdefault("content-type", "application/json")
    return headers


def _response_headers(response: UpstreamResponse) -> Headers:
    return [
        (name, value)
        for name, value in response.headers
        if name.decode("latin-1") not in _NOT_FORWARDED
    ]


Observer = Callable[[bytes], None]


class EndpointMissing(Exception):
    """The backend answered that it has no such endpoint (the caller may convert instead)."""


async def forward(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: bytes,
    send: Send,
    receive: Receive,
    *,
    missing_statuses: frozenset[int] = frozenset(),
    observe: Observer | None = None,
    stopwatch: Stopwatch | None = None,
) -> None:
    """POST ``body`` to ``path`` on ``backend`` and relay the answer to the client.

    The entry's ``default_timeout`` bounds the wait for a free slot plus the
    answer (for a stream: until its first byte, then each gap between reads).
    When the client disconnects, the upstream request is cancelled. An answer
    with a status in ``missing_statuses`` is not relayed: EndpointMissing.
    ``observe`` sees each piece of a successful answer's body as it is relayed.
    ``stopwatch``, when given, times the router's own share for the response header.
    """
    async with admitted(backend) as deadline:
        exchange = _exchange(
            pool,
            backend,
            path,
            headers,
            body,
            send,
            deadline,
            missing_statuses,
            observe,
            stopwatch or Stopwatch(),
        )
        await run_until_disconnect(receive, exchange, backend)


@contextlib.asynccontextmanager
async def admitted(backend: Backend) -> AsyncIterator[float]:
    """Hold one of the backend's slots; yields the request's deadline (loop time)."""
    timeout = backend.entry.default_timeout
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            await backend.gate.acquire()
    except TimeoutError:
        raise BackendTimeout(
            f"no free slot on {backend.label} within its default_timeout of {timeout:g}s "
            f"(max_concurrency {backend.entry.max_concurrency})"
        ) from None
    try:
        yield deadline
    finally:
        backend.gate.release()


async def open_upstream(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: bytes,
    deadline: float,
) -> UpstreamResponse:
    """POST to the backend; connection failures and timeouts become router errors."""
    entry = backend.entry
    timeout = entry.default_timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await pool.request(
                "POST", entry.connect_host, entry.port, path, headers.items(), body
            )
    except TimeoutError:
        raise BackendTimeout(
            f"{backend.label} did not answer within its default_timeout of {timeout:g}s"
        ) from None
    except ConnectFailed as exc:
        raise BackendUnavailable(
            f"{backend.label} is not reachable: {connect_failure(exc)}",
            retry_after=UNAVAILABLE_RETRY_AFTER_S,
        ) from None
    except UpstreamError as exc:
        raise BadGateway(f"{backend.label} failed: {exc}") from None


async def _exchange(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: bytes,
    send: Send,
    deadline: float,
    missing_statuses: frozenset[int],
    observe: Observer | None,
    stopwatch: Stopwatch,
) -> None:
    stopwatch.backend_asked()
    response = await open_upstream(pool, backend, path, headers, body, deadline)
    if response.status in missing_statuses:
        response.release()
        raise EndpointMissing(path)
    if response.status != 200:
        observe = None
    completed = False
    try:
        if response.content_type == "text/event-stream":
            stopwatch.backend_answered()
            await _relay_stream(response, send, backend, observe, stopwatch)
        else:
            await _relay_whole(response, send, backend, deadline, observe, stopwatch)
        completed = True
    finally:
        if completed:
            response.release()
        else:
            # Mid-body: drop the connection so the backend sees the client leave.
            response.close()


async def read_whole(response: UpstreamResponse, backend: Backend, deadline: float) -> bytes:
    try:
        async with asyncio.timeout_at(deadline):
            return await response.read()
    except TimeoutError:
        raise BackendTimeout(
            f"{backend.label} did not finish its answer within its default_timeout of "
            f"{backend.entry.default_timeout:g}s"
        ) from None
    except UpstreamError as exc:
        raise BadGateway(f"{backend.label} broke off its answer: {exc}") from None


async def _relay_whole(
    response: UpstreamResponse,
    send: Send,
    backend: Backend,
    deadline: float,
    observe: Observer | None,
    stopwatch: Stopwatch,
) -> None:
    payload = await read_whole(response, backend, deadline)
    stopwatch.backend_answered()
    if observe is not None:
        observe(payload)
    headers = [*_response_headers(response), stopwatch.header()]
    await send_response(send, response.status, payload, headers)


async def _relay_stream(
    response: UpstreamResponse,
    send: Send,
    backend: Backend,
    observe: Observer | None,
    stopwatch: Stopwatch,
) -> None:
    own = {name for name, _ in SSE_HEADERS}  # ours replace the backend's, never doubled
    passed = [header for header in _response_headers(response) if header[0] not in own]
    headers = [*passed, *SSE_HEADERS, stopwatch.header()]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    final = b""
    try:
        async with contextlib.aclosing(stream_pieces(response, backend)) as pieces:
            async for chunk in pieces:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if observe is not None:
                    observe(chunk)
    except StreamBroken as broken:
        final = _sse_error(broken.status, str(broken), broken.code)
    # The status line is long gone, so a failure can only be told in-band.
    await send({"type": "http.response.body", "body": final, "more_body": False})


class StreamBroken(Exception):
    """The backend's stream stalled or broke off after the response had started."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


async def stream_pieces(
    response: UpstreamResponse, backend: Backend
) -> AsyncGenerator[bytes, None]:
    """The backend's body as it arrives, each gap bounded by the entry's default_timeout."""
    idle_timeout = backend.entry.default_timeout
    try:
        while True:
            async with asyncio.timeout(idle_timeout):
                piece = await response.read_piece()
            if not piece:
                return
            yield piece
    except TimeoutError:
        log.warning("%s: stream stalled for %gs; ending it", backend.label, idle_timeout)
        message = f"{backend.label} sent nothing for {idle_timeout:g}s"
        raise StreamBroken(504, "timeout", message) from None
    except UpstreamError as exc:
        log.warning("%s: stream broken: %s", backend.label, exc)
        message = f"{backend.label} broke off the stream: {exc}"
        raise StreamBroken(502, "backend_error", message) from None


def _sse_error(status: int, message: str, code: str) -> bytes:
    return b"data: " + error_body(status, message, code=code) + b"\n\n"


async def run_until_disconnect(
    receive: Receive, work: Coroutine[Any, Any, None], backend: Backend
) -> None:
    """Run ``work``; cancel it if the client disconnects first."""
    work_task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((work_task, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not work_task.done():
            work_task.cancel()
    if work_task.cancelled() or not work_task.done():
        try:
            await work_task
        except asyncio.CancelledError:
            log.info("%s: client disconnected; upstream request cancelled", backend.label)
        return
    work_task.result()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
