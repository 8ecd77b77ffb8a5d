"""Forwarding one request to a backend and its answer back to the client.

Bytes pass through untouched: the request body as the client sent it (unless
the caller changed it on purpose) and the response body as the backend wrote
it. Server-sent events are relayed one read at a time, never collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from slm_server.router.asgi import Body, Headers, Receive, Send, send_response
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
        # The router sends whole bodies at once: a backend's 100 Continue would only
        # delay the request (the client's own wait was answered by uvicorn).
        "expect",
    }
)

# A backend that is down is usually being (re)started; a few seconds is a fair hint.
UNAVAILABLE_RETRY_AFTER_S = 5

# Kept below the idle keep-alive timeout of llama-server (5 s) so that the pool
# never hands out a connection the backend is about to close.
_KEEPALIVE_TIMEOUT_S = 4.0

# How long a request runs before the router starts watching for its client leaving, so a
# client that leaves is noticed (and the backend's work cancelled) within this delay.
_WATCH_AFTER_S = 0.05

# uvicorn dates every response, the router's own included; the backend's would double it.
_NOT_RELAYED = _NOT_FORWARDED | {"date"}

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
        if name.decode("latin-1") not in _NOT_RELAYED
    ]


Observer = Callable[[bytes], None]


class EndpointMissing(Exception):
    """The backend answered ``status``, one the caller takes for "convert instead"."""

    def __init__(self, path: str, status: int) -> None:
        super().__init__(f"{path}: {status}")
        self.status = status


async def forward(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: Body,
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


def admitted(backend: Backend) -> Slot:
    """``async with admitted(backend) as deadline``: one of the backend's slots for the block.

    ``deadline`` (loop time) is when the request's ``default_timeout`` runs out; the wait
    for a slot counts towards it.
    """
    return Slot(backend)


class Slot:
    """A held slot of a backend's admission gate (a class, not a generator: it is per request)."""

    __slots__ = ("_backend",)

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def __aenter__(self) -> float:
        backend = self._backend
        timeout = backend.entry.default_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        if backend.gate.try_acquire():  # the usual case: no timer needed
            return deadline
        try:
            async with asyncio.timeout_at(deadline):
                await backend.gate.acquire()
        except TimeoutError:
            raise BackendTimeout(
                f"no free slot on {backend.label} within its default_timeout of {timeout:g}s "
                f"(max_concurrency {backend.entry.max_concurrency})"
            ) from None
        return deadline

    async def __aexit__(self, *exc_info: object) -> None:
        self._backend.gate.release()


async def open_upstream(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: Body,
    deadline: float,
) -> UpstreamResponse:
    """POST to the backend; connection failures and timeouts become router errors."""
    try:
        async with asyncio.timeout_at(deadline):
            return await _post(pool, backend, path, headers, body)
    except TimeoutError:
        raise _late(backend, answered=False) from None


async def _post(
    pool: UpstreamPool, backend: Backend, path: str, headers: dict[str, str], body: Body
) -> UpstreamResponse:
    entry = backend.entry
    try:
        return await pool.request(
            "POST", entry.connect_host, entry.port, path, headers.items(), body
        )
    except ConnectFailed as exc:
        raise BackendUnavailable(
            f"{backend.label} is not reachable: {connect_failure(exc)}",
            retry_after=UNAVAILABLE_RETRY_AFTER_S,
        ) from None
    except UpstreamError as exc:
        raise BadGateway(f"{backend.label} failed: {exc}") from None


def _late(backend: Backend, *, answered: bool) -> BackendTimeout:
    what = "finish its answer" if answered else "answer"
    return BackendTimeout(
        f"{backend.label} did not {what} within its default_timeout of "
        f"{backend.entry.default_timeout:g}s"
    )


async def _exchange(
    pool: UpstreamPool,
    backend: Backend,
    path: str,
    headers: dict[str, str],
    body: Body,
    send: Send,
    deadline: float,
    missing_statuses: frozenset[int],
    observe: Observer | None,
    stopwatch: Stopwatch,
) -> None:
    stopwatch.backend_asked()
    response: UpstreamResponse | None = None
    try:
        # One timer for the answer: its head, and its whole body unless it is a stream.
        async with asyncio.timeout_at(deadline):
            response = await _post(pool, backend, path, headers, body)
            streamed = response.content_type == "text/event-stream"
            payload = b"" if streamed else await _read(response, backend)
    except TimeoutError:
        if response is not None:
            response.close()
        raise _late(backend, answered=response is not None) from None
    except BaseException:  # the client left, or the body broke off: never reuse the connection
        if response is not None:
            response.close()
        raise
    if response.status in missing_statuses:
        response.release()
        raise EndpointMissing(path, response.status)
    if response.status != 200:
        observe = None
    stopwatch.backend_answered()
    if not streamed:
        response.release()
        if observe is not None:
            observe(payload)
        headers_out = [*_response_headers(response), stopwatch.header()]
        await send_response(send, response.status, payload, headers_out)
        return
    completed = False
    try:
        await _relay_stream(response, send, backend, observe, stopwatch)
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
            return await _read(response, backend)
    except TimeoutError:
        raise _late(backend, answered=True) from None


async def _read(response: UpstreamResponse, backend: Backend) -> bytes:
    try:
        return await response.read()
    except UpstreamError as exc:
        raise BadGateway(f"{backend.label} broke off its answer: {exc}") from None


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
    """Run ``work`` in this task; cancel it if the client disconnects first.

    The work runs in the calling task, and a watcher task cancels that task on a
    disconnect (as ``asyncio.timeout`` does on expiry): one task per request instead of two.
    The watcher starts only once the work has run for ``_WATCH_AFTER_S``: a client that left
    earlier is noticed then.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    assert task is not None
    client_left = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal client_left
        while (await receive())["type"] != "http.disconnect":
            pass
        client_left = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    # Most answers from a fast backend are done by then: they never pay for the task.
    watch_later = loop.call_later(_WATCH_AFTER_S, start_watching)
    try:
        await work
    except asyncio.CancelledError:
        # Swallowed only when this cancel was the watcher's alone (not a shutdown's).
        if not client_left or task.uncancel() > 0:
            raise
        log.info("%s: client disconnected; upstream request cancelled", backend.label)
    finally:
        watch_later.cancel()
        if watcher is not None:
            watcher.cancel()
