"""Forwarding one request to a backend and its answer back to the client.

Bytes pass through untouched: the request body as the client sent it (unless
the caller changed it on purpose) and the response body as the backend wrote
it. Server-sent events are relayed one read at a time, never collected.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Protocol

from slm_server.router.asgi import ENDED_IN_ERROR, Body, Headers, Message, Send, send_response
from slm_server.router.backend import Backend
from slm_server.router.errors import (
    ClosedBeforeAnswer,
    ConnectTimedOut,
    Unreachable,
    UpstreamRefusal,
    error_body,
)
from slm_server.router.lifetime import ANSWERING, RequestLifetime
from slm_server.router.remote_answers import from_remote, refused
from slm_server.upstream import (
    BodyStalled,
    ConnectFailed,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself. Names are lower
# case: ASGI servers lower-case request header names, the upstream client response ones.
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"accept-encoding",
        # The router sends whole bodies at once: a backend's 100 Continue would only
        # delay the request (the client's own wait was answered by uvicorn).
        b"expect",
        # The router sets the request's id both ways (see request_id).
        b"x-request-id",
    }
)

# With API keys, the client's key is the router's business alone: never a backend's.
# A server elsewhere never sees it either, keys or not (it is sent its own, if any).
_NOT_FORWARDED_WITH_KEYS = _NOT_FORWARDED | {b"authorization", b"x-api-key"}

# A backend that is down is usually being (re)started; a few seconds is a fair hint.
UNAVAILABLE_RETRY_AFTER_S = 5

# Kept below the idle keep-alive timeout of llama-server (5 s) so that the pool
# never hands out a connection the backend is about to close.
_KEEPALIVE_TIMEOUT_S = 4.0

# uvicorn dates every response, the router's own included; the backend's would double it.
_NOT_RELAYED = _NOT_FORWARDED | {b"date"}

# Compression would delay every SSE chunk behind the compressor's buffer.
_IDENTITY = (b"accept-encoding", b"identity")
_JSON_CONTENT = (b"content-type", b"application/json")

SSE_HEADERS: Headers = [(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]
# A stream's answer gets ours in place of the backend's, never both.
_NOT_RELAYED_IN_STREAMS = _NOT_RELAYED | {name for name, _ in SSE_HEADERS}


# A machine that is off (or a firewall that drops packets) lets a connect hang for
# minutes: past this, the upstream counts as unreachable, and another may take the
# request. Loopback and LAN connections, TLS handshake included, take milliseconds.
CONNECT_TIMEOUT_S = 10.0


def new_upstream_pool() -> UpstreamPool:
    """The HTTP client for backends: pooled keep-alive, bodies left exactly as sent."""
    return UpstreamPool(keepalive_s=_KEEPALIVE_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S)


def connect_failure(exc: ConnectFailed, elsewhere: bool = False) -> str:
    """Why a connection to a backend failed, in the words users search for.

    ``elsewhere``: a server slm_server does not run, so its not running is not a guess
    this router can make.
    """
    if isinstance(exc.os_error, ConnectionRefusedError):
        if elsewhere:
            return "Connection refused - nothing listens at that address"
        return "Connection refused - backend not running"
    return str(exc.os_error)


def forwarded_request_headers(raw: Headers, strip_credentials: bool = False) -> Headers:
    """The client's headers as a backend gets them: repeats and order kept, hop-by-hop
    ones dropped (the fixed set and any named in ``Connection``), a content type ensured.

    ``strip_credentials`` (the router checks API keys, or the backend runs elsewhere):
    ``Authorization`` and ``x-api-key`` are dropped too.
    """
    headers = _end_to_end(raw, _NOT_FORWARDED_WITH_KEYS if strip_credentials else _NOT_FORWARDED)
    headers.append(_IDENTITY)
    for name, _ in headers:
        if name == b"content-type":
            return headers
    headers.append(_JSON_CONTENT)
    return headers


def _response_headers(
    response: UpstreamResponse, backend: Backend, dropped: frozenset[bytes] = _NOT_RELAYED
) -> Headers:
    relayed = _end_to_end(response.headers, dropped)
    return relayed if backend.remote is None else from_remote(relayed)


def _end_to_end(raw: Headers, hop_by_hop: frozenset[bytes]) -> Headers:
    """``raw`` without ``hop_by_hop`` names nor those its ``Connection`` headers name."""
    kept: Headers = []
    named: list[bytes] = []
    for name, value in raw:
        if name not in hop_by_hop:
            kept.append((name, value))
        elif name == b"connection":
            named += value.lower().split(b",")
    if not named:  # the usual case, on every request and answer: nothing more to drop
        return kept
    # "Connection: keep-alive" or "close", the usual ones, name headers dropped anyway.
    dropped = {token.strip() for token in named} - hop_by_hop
    if dropped:
        return [header for header in kept if header[0] not in dropped]
    return kept


class EndpointMissing(Exception):
    """The backend answered ``status``, one the caller takes for "convert instead"."""

    def __init__(self, path: str, status: int) -> None:
        super().__init__(f"{path}: {status}")
        self.status = status


async def forward(
    pool: UpstreamPool,
    backend: Backend,
    target: str,
    headers: Headers,
    body: Body,
    send: Send,
    lifetime: RequestLifetime,
    *,
    missing_statuses: frozenset[int] = frozenset(),
    refusals: frozenset[int] = frozenset(),
    pieces: PieceWriter | None = None,
) -> None:
    """POST ``body`` to ``target`` (path and query) on ``backend``; relay the answer.

    The caller holds the backend's slot. The request's deadline bounds the answer (for
    a stream: until its response headers; then each gap between reads has the entry's
    ``default_timeout``). An answer with a status in ``missing_statuses`` is not
    relayed: EndpointMissing; nor one in ``refusals`` (statuses another upstream may do
    better than): UpstreamRefusal. ``pieces``: what ``send`` goes through, when a
    stream's events may skip the messages (see PieceWriter).
    """
    stopwatch = lifetime.stopwatch
    stopwatch.pause()
    response: UpstreamResponse | None = None
    # The deadline bounds the answer: its head, and its whole body unless it is a stream.
    lifetime.answer_begins()
    try:
        response = await _post(pool, backend, target, headers, body)
        # A server elsewhere's error is read whole, to be told in the envelope if need be.
        remote_error = backend.remote is not None and response.status >= 300
        refusal = response.status in refusals
        streamed = response.content_type == "text/event-stream" and not remote_error and not refusal
        payload = b"" if streamed else await _read(response, backend)
    except asyncio.CancelledError:  # the deadline passed, or the client left: drop the connection
        if response is not None:
            response.close()
        if lifetime.answer_cut():
            raise lifetime.ran_out(ANSWERING) from None
        raise
    except BaseException:  # the body broke off: never reuse the connection
        if response is not None:
            response.close()
        raise
    finally:
        lifetime.answer_ends()
        # Failed too: the upstream's wait is not the router's time, though another may follow.
        stopwatch.resume()
    if response.status in missing_statuses:
        response.release()
        raise EndpointMissing(target, response.status)
    if refusal:
        response.release()
        relayed = None  # an error a server elsewhere sent in no OpenAI form is never relayed
        if not remote_error or refused(backend, target, response.status, payload) is None:
            relayed = (_response_headers(response, backend), payload)
        raise refusal_of(response, payload, relayed)
    if not streamed:
        response.release()
        error = refused(backend, target, response.status, payload) if remote_error else None
        if error is not None:
            raise error
        headers_out = _response_headers(response, backend)
        headers_out += stopwatch.headers()
        await send_response(send, response.status, payload, headers_out)
        return
    completed = False
    try:
        # In the request's own task: the relay wakes it only at the stream's end, or when
        # the client falls behind (see _relay_stream), so a task of its own saves nothing.
        await _relay_stream(response, send, backend, stopwatch.headers(), pieces)
        completed = True
    finally:
        if completed:
            response.release()
        else:
            # Mid-body: drop the connection so the backend sees the client leave.
            response.close()


async def open_upstream(
    pool: UpstreamPool,
    backend: Backend,
    target: str,
    headers: Headers,
    body: Body,
    lifetime: RequestLifetime,
) -> UpstreamResponse:
    """POST to the backend within the request's deadline; failures become router errors."""
    return await lifetime.answer(_post(pool, backend, target, headers, body))


async def _post(
    pool: UpstreamPool, backend: Backend, target: str, headers: Headers, body: Body
) -> UpstreamResponse:
    entry = backend.entry
    remote = backend.remote
    try:
        if remote is None:
            return await pool.request(
                "POST", entry.connect_host, entry.local_port, target, headers, body
            )
        url = remote.url
        return await pool.request(
            "POST", url.host, url.port, url.target(target), headers, body, tls=remote.tls
        )
    except ConnectFailed as exc:
        if isinstance(exc.os_error, TimeoutError):
            raise ConnectTimedOut(
                f"{backend.label} is not reachable: {exc.os_error}",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
            ) from None
        raise Unreachable(
            f"{backend.label} is not reachable: {connect_failure(exc, remote is not None)}",
            retry_after=UNAVAILABLE_RETRY_AFTER_S,
        ) from None
    except UpstreamError as exc:
        raise ClosedBeforeAnswer(f"{backend.label} failed: {exc}") from None


def refusal_of(
    response: UpstreamResponse,
    payload: bytes,
    answer: tuple[Headers, bytes] | None,
) -> UpstreamRefusal:
    """An upstream's 502, 503 or 429, with its own message and Retry-After, and the
    ``answer`` (headers, body) the client gets if it is the last word."""
    status = response.status
    message = f"the upstream answered HTTP {status}"
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    elif isinstance(error, str) and error:
        message = error
    retry_after = None
    for name, value in response.headers:
        if name == b"retry-after" and value.isdigit():
            retry_after = int(value)
    return UpstreamRefusal(status, message, retry_after=retry_after, answer=answer)


async def read_whole(
    response: UpstreamResponse, backend: Backend, lifetime: RequestLifetime
) -> bytes:
    return await lifetime.answer(_read(response, backend))


async def _read(response: UpstreamResponse, backend: Backend) -> bytes:
    """The whole body of an answer read before any of it is relayed: broken off, it is a
    failure another upstream may mend (ClosedBeforeAnswer), since the client saw none."""
    try:
        return await response.read()
    except UpstreamError as exc:
        raise ClosedBeforeAnswer(f"{backend.label} broke off its answer: {exc}") from None


async def _relay_stream(
    response: UpstreamResponse,
    send: Send,
    backend: Backend,
    timing: Headers,
    pieces: PieceWriter | None,
) -> None:
    headers = _response_headers(response, backend, _NOT_RELAYED_IN_STREAMS)
    headers += SSE_HEADERS
    headers += timing
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    end: Message = {"type": "http.response.body", "body": b"", "more_body": False}
    # While the client keeps up, each event goes from the backend's connection to the
    # client's in the connection's own callback (hand_over): no task wakes per event.
    # When the client falls behind (its send is not done at once), the events wait in the
    # connection, and this loop sends them once the client has taken what it was sent.
    # One idle timer for the whole stream, in the connection. What arrived together goes
    # out together.
    behind: list[Awaitable[None]] = []
    failed: list[Exception] = []

    def hand_over(piece: bytes) -> bool:
        try:
            sending = send({"type": "http.response.body", "body": piece, "more_body": True})
        except Exception as exc:  # raised here, not in the backend connection's callback
            failed.append(exc)
            return False
        if isinstance(sending, asyncio.Future) and sending.done():
            return True
        behind.append(sending)
        return False

    sink = hand_over if pieces is None else pieces.write_piece
    take_piece, arrival = response.pieces(backend.entry.default_timeout)
    try:
        while True:
            piece = take_piece()
            if piece is None:
                await arrival(sink)
                if failed:
                    raise failed[0]
                if behind:
                    await behind.pop()
                elif pieces is not None:  # it may have stepped aside: the client is behind
                    await pieces.drained()
            elif piece:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            else:
                break
    except UpstreamError as exc:
        broken = stream_broken(exc, backend)
        end["body"] = _sse_error(broken.status, str(broken), broken.code)
        end[ENDED_IN_ERROR] = True
    finally:
        for left in behind:  # a send not awaited: the request ended first
            if inspect.iscoroutine(left):
                left.close()
    # The status line is long gone, so a failure can only be told in-band.
    await send(end)


class PieceWriter(Protocol):
    """A stream's events written without a message each (a RequestRecord, under a
    server with WRITE_PIECE): ``write_piece`` returns False once the client has fallen
    behind, and ``drained`` is what to wait on then."""

    def write_piece(self, piece: bytes) -> bool: ...
    def drained(self) -> Awaitable[None]: ...


class StreamBroken(Exception):
    """The backend's stream stalled or broke off after the response had started."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def stream_broken(exc: UpstreamError, backend: Backend) -> StreamBroken:
    """What a read of a stream's body that failed (``exc``) tells the client, logged."""
    if isinstance(exc, BodyStalled):
        log.warning("%s: stream stalled for %gs; ending it", backend.label, exc.idle_s)
        return StreamBroken(504, "timeout", f"{backend.label} sent nothing for {exc.idle_s:g}s")
    log.warning("%s: stream broken: %s", backend.label, exc)
    return StreamBroken(502, "backend_error", f"{backend.label} broke off the stream: {exc}")


async def stream_pieces(
    response: UpstreamResponse, backend: Backend
) -> AsyncGenerator[bytes, None]:
    """The backend's body as it arrives, each gap bounded by the entry's default_timeout.

    The same take/wait loop as _relay_stream's, kept apart on purpose: that one is the
    path of every streamed token, and a generator between it and the socket would cost a
    frame per event. A change to one belongs in the other."""
    take_piece, arrival = response.pieces(backend.entry.default_timeout)
    try:
        while True:
            piece = take_piece()
            if piece is None:
                await arrival()
            elif piece:
                yield piece
            else:
                return
    except UpstreamError as exc:
        raise stream_broken(exc, backend) from None


def _sse_error(status: int, message: str, code: str) -> bytes:
    return b"data: " + error_body(status, message, code=code) + b"\n\n"
