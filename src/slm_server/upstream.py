"""A small HTTP/1.1 client for backends: a keep-alive pool, raw bytes, streamed bodies.

The router's own cost per request was mostly its HTTP client's. General clients do much
the router never needs (URL and cookie handling, redirects, proxies, multi-dict headers,
decompression) on every request. Backends are HTTP on known host:port pairs (HTTPS for a
server elsewhere, checked by the caller's SSL context), so this client writes each
request as one buffer and parses the answer with httptools (the parser uvicorn uses),
handing body pieces over as they arrive. Timeouts are the caller's: every wait here is
an ordinary await that ``asyncio.timeout`` can bound and cancel; but a body read piece
by piece (``pieces``) can carry an idle bound of its own, one timer per body rather than
a timeout per wait, since a stream waits once per event.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol, cast

import httptools

# Reading from a backend pauses while this much of its body waits for a slow client, so
# a fast backend cannot fill the router's memory; it resumes below the low mark.
_PAUSE_ABOVE_BYTES = 256 * 1024
_RESUME_BELOW_BYTES = 64 * 1024

# The most a backend's status line and headers may take, together (common proxies allow
# 8-64 KiB). More is refused rather than buffered: a backend that sends headers without
# end would otherwise hold the router's memory until the request's timeout.
MAX_HEADER_BYTES = 64 * 1024

# The most an answer that is read whole (not relayed piece by piece, as streams are) may
# take. Generous for real answers (a batch of embeddings, base64 images, a long speech
# file: tens of MB), it bounds what one backend that sends without end can cost.
MAX_WHOLE_BODY_BYTES = 256 * 1024 * 1024

# A timer may run this much early (asyncio runs those due within its clock's resolution).
_TIMER_SLACK_S = 0.001

# A request body up to this size is written joined to its head (a copy, one write); a
# larger one is written as it is, so an upload is never held twice while it goes out.
_JOIN_BODIES_UP_TO = 64 * 1024


class UpstreamError(Exception):
    """The exchange with a backend failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made; ``os_error`` says why (refused, unreachable...)."""

    def __init__(self, address: str, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {address}: {os_error}")
        self.os_error = os_error


class ConnectionBroken(UpstreamError):
    """The connection closed, or sent something that is not HTTP, before the answer ended."""


class BodyStalled(UpstreamError):
    """Nothing of the body arrived for the reader's idle limit (see
    ``UpstreamResponse.bound_idle``)."""

    def __init__(self, idle_s: float) -> None:
        super().__init__(f"nothing arrived for {idle_s:g}s")
        self.idle_s = idle_s


class ResponseTooLarge(ConnectionBroken):
    """The backend sent more than the router holds for one answer (MAX_HEADER_BYTES of
    headers, MAX_WHOLE_BODY_BYTES of a body read whole)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a backend, carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        # None once the connection is lost (see connection_lost).
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.closed = False
        self._aborted = False
        self.idle_since = 0.0
        self._paused = False
        # The idle bound on waits for the body (see bound_idle): 0 for none.
        self._idle_s = 0.0
        self._wait_began = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_received: asyncio.Future[None] = self._loop.create_future()
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self._interim = False
        self._header_bytes = 0  # of this answer's header lines, as parsed
        self._unended_head_bytes = 0  # received while its head has not ended
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        # Takes the body's pieces as they arrive during one wait (see arrival).
        self._sink: Sink | None = None

    @property
    def reusable(self) -> bool:
        """The answer ended cleanly and nothing of this exchange is left in either direction."""
        transport = self._transport
        return (
            self.complete
            and self.keep_alive
            and not self.closed
            and self._error is None
            and not self._paused
            and transport is not None
            and transport.get_write_buffer_size() == 0
        )

    def send(self, head: bytes, body: bytes | bytearray) -> None:
        """Start an exchange: write the whole request."""
        assert self._transport is not None
        self._begin()
        if len(body) <= _JOIN_BODIES_UP_TO:
            self._transport.write(head + body)  # one buffer, one system call
        else:  # a large body is not copied: it goes out as the client's own bytes object
            self._transport.writelines((head, body))

    async def read_piece(self) -> bytes:
        """All of the body that has arrived, waiting for some; b"" once it has ended."""
        while (piece := self.take_piece()) is None:
            await self.arrival()
        return piece

    def take_piece(self) -> bytes | None:
        """All of the body that has arrived; b"" once it has ended; None while nothing
        has (then await ``arrival``). Raises the exchange's error, if it failed."""
        pieces = self._pieces
        if not pieces:
            if self._error is not None:  # before `complete`: a bad end is no clean end
                raise self._error
            return b"" if self.complete else None
        piece = pieces.popleft() if len(pieces) == 1 else self._take_all()
        self._buffered -= len(piece)
        if self._paused and self._buffered < _RESUME_BELOW_BYTES and self._transport:
            self._paused = False
            self._transport.resume_reading()
        return piece

    def arrival(self, sink: Sink | None = None) -> asyncio.Future[None]:
        """Done when more of the body, its end or an error has come: after ``take_piece``
        gave None. A future rather than a coroutine: a stream awaits one per event.

        With ``sink``, the pieces that arrive meanwhile are handed to it as they come,
        in this connection's callbacks, and the wait goes on: a relayed stream then costs
        no wake per event. It ends at the body's end, an error, or once ``sink`` returns
        False (it took that piece, but wants no more for now)."""
        self._sink = sink
        waiter = self._waiter = self._loop.create_future()
        if self._idle_s:
            # One timer for the whole body, not one per wait (a stream waits once per
            # event): it checks the wait under way when due, and moves to its bound.
            self._wait_began = began = self._loop.time()
            if self._idle_timer is None:
                self._idle_timer = self._loop.call_at(began + self._idle_s, self._idle_due)
        return waiter

    def bound_idle(self, idle_s: float) -> None:
        """From now on each wait for the body fails with BodyStalled after ``idle_s``
        without a byte of it; 0 lifts the bound."""
        self._idle_s = idle_s
        if not idle_s and self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_due(self) -> None:
        self._idle_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or not self._idle_s:
            return  # nobody waits now: the next wait sets the timer again
        due = self._wait_began + self._idle_s
        if self._loop.time() + _TIMER_SLACK_S < due:  # a later wait: its own bound
            self._idle_timer = self._loop.call_at(due, self._idle_due)
            return
        self._fail(BodyStalled(self._idle_s))
        # Stalled is final: what the backend might still send is not relayed after it.
        self.abort()

    def _take_all(self) -> bytes:
        piece = b"".join(self._pieces)
        self._pieces.clear()
        return piece

    def abort(self) -> None:
        """Drop the connection at once: the backend sees its client leave."""
        self.bound_idle(0)
        self._sink = None
        self.closed = True
        self._aborted = True
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass, but behaves as one).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        assert self._parser is not None, "data after connection_lost"
        heading = not self.head_received.done()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"the backend's answer is not valid HTTP: {exc}"))
            self.abort()
            return
        if heading and not self.head_received.done():
            # Still no end of the head: the parser holds what came, so count it all.
            self._unended_head_bytes += len(data)
            self._check_head_size(self._unended_head_bytes)
        if self._error is not None:
            self.abort()
            return
        if self._buffered > _PAUSE_ABOVE_BYTES and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._aborted:  # our own doing: whatever was unread is not wanted
            self._fail(ConnectionBroken("the connection was closed by the router"))
        elif exc is None and self.head_received.done() and self._ends_at_close():
            self.on_message_complete()
        elif not self.complete:
            reason = f": {exc}" if exc else ""
            self._fail(ConnectionBroken(f"the backend closed the connection mid-answer{reason}"))
        # The parser calls back into this object and the transport holds it: both are cycles,
        # and the router's cyclic collector runs rarely (router/app.py), so without this a
        # connection dropped mid-answer (a client that left) kept its buffers until then.
        self._parser = None
        self._transport = None

    def _ends_at_close(self) -> bool:
        """An answer with neither length nor chunks, which HTTP/1.0-style servers send."""
        framing = {b"content-length", b"transfer-encoding"}
        return not any(name in framing for name, _ in self.headers)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._check_head_size(self._header_bytes)

    def _check_head_size(self, size: int) -> None:
        if size > MAX_HEADER_BYTES and self._error is None:
            self._fail(
                ResponseTooLarge(f"the backend's response headers exceed {MAX_HEADER_BYTES} bytes")
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # called from within feed_data
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            self.headers = []
            self._header_bytes = self._unended_head_bytes = 0
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        if not self.head_received.done():
            self.head_received.set_result(None)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:  # only ever set while nothing is kept (see arrival)
            if self._idle_s:
                self._wait_began = self._loop.time()  # the idle bound counts from here
            if not sink(body):
                self._wake()
            return
        self._pieces.append(body)
        self._buffered += len(body)
        waiter = self._waiter  # _wake, inlined: this runs for every piece of every body
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if not self.head_received.done():
            self.head_received.set_exception(error)
            self.head_received.exception()  # retrieved: nobody may be waiting any more
        self._wake()

    def _wake(self) -> None:
        self._sink = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class UpstreamResponse:
    """A backend's answer: status and headers at once, the body as it arrives.

    End it with ``release`` (back to the pool, when the body was read to its end) or
    ``close`` (drop the connection).
    """

    def __init__(self, pool: UpstreamPool, key: _Key, connection: _Connection) -> None:
        self._pool = pool
        self._key = key
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers = connection.headers  # (lower-case name, value), as received

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> str:
        """The media type without parameters, in lower case ("" when absent)."""
        value = self.header(b"content-type") or b""
        return value.split(b";", 1)[0].strip().lower().decode("latin-1")

    async def read_piece(self) -> bytes:
        """The next piece of the body (all that has arrived); b"" at its end."""
        assert self._connection is not None, "released"
        return await self._connection.read_piece()

    def pieces(self, idle_s: float = 0.0) -> tuple[PieceTaker, Arrival]:
        """``take_piece`` and ``arrival`` of the connection (see _Connection), for a loop
        that reads a stream without a coroutine per event; each wait bounded: BodyStalled
        after ``idle_s`` (0: unbounded) without a byte of the body. Valid until
        ``release`` or ``close``."""
        connection = self._connection
        assert connection is not None, "released"
        connection.bound_idle(idle_s)
        return connection.take_piece, connection.arrival

    async def read(self, limit: int = MAX_WHOLE_BODY_BYTES) -> bytes:
        """The whole body; ResponseTooLarge as soon as it exceeds ``limit`` bytes."""
        pieces = []
        size = 0
        while piece := await self.read_piece():
            size += len(piece)
            if size > limit:
                raise ResponseTooLarge(f"the backend's answer exceeds {limit} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if it can be reused."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.bound_idle(0)
        if connection.reusable:
            self._pool.put_back(self._key, connection)
        else:
            connection.abort()

    def close(self) -> None:
        """Drop the connection, even mid-body."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()


PieceTaker = Callable[[], "bytes | None"]
# Takes a piece of a body; False: it wants no more for now.
Sink = Callable[[bytes], bool]


class Arrival(Protocol):
    def __call__(self, sink: Sink | None = None) -> asyncio.Future[None]: ...


# Connections are shared only between requests to one address over one kind of transport.
_Key = tuple[str, int, ssl.SSLContext | None]


class UpstreamPool:
    """Keep-alive connections per backend address, reused most-recent first."""

    def __init__(self, keepalive_s: float, connect_timeout_s: float | None = None) -> None:
        """``keepalive_s``: an idle connection older than this is closed, not reused.

        Keep it below the backends' own idle timeout (llama-server's is 5 s), so that the
        pool never hands out a connection the backend is about to close.

        ``connect_timeout_s``: a connection (and its TLS handshake) not made by then fails
        as ConnectFailed; None: only the caller's own deadline bounds it.
        """
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[_Key, list[_Connection]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        path: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes | bytearray = b"",
        *,
        tls: ssl.SSLContext | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once the answer's status line and headers are in.

        ``path`` may carry a query; ``headers`` are sent as given, repeats included.
        ``tls``: HTTPS, the server's certificate checked as the context says.
        Not for HEAD: the parser is not told the method, so it would wait for a body.
        """
        assert method != "HEAD", "HEAD answers have no body to frame"
        start = f"{method} {path} HTTP/1.1\r\nhost: {_authority(host, port, tls)}\r\n"
        lines = [start.encode("latin-1")]
        lines += [b"%s: %s\r\n" % header for header in headers]
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        head = b"".join(lines)
        key = (host, port, tls)
        while True:
            connection = self._take_idle(key)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(host, port, tls)
            connection.send(head, body)
            try:
                await connection.head_received
            except ConnectionBroken:
                # A reused connection that closed without a byte of answer: almost always
                # the backend closing it for idleness just as the request went out (the
                # keep-alive limit makes that rare, not impossible), so it is sent again on
                # a fresh one. Were the backend instead to have read it and died, the
                # second try finds it gone: the caller gets "not reachable", which is true.
                if reused and not connection.received_any:
                    continue
                raise
            except BaseException:  # cancelled (a timeout, the client left): never reuse it
                connection.abort()
                raise
            return UpstreamResponse(self, key, connection)

    async def get(
        self,
        host: str,
        port: int,
        path: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        tls: ssl.SSLContext | None = None,
    ) -> tuple[int, bytes]:
        """A whole GET exchange: status and body."""
        response = await self.request("GET", host, port, path, headers, tls=tls)
        try:
            body = await response.read()
        except BaseException:
            response.close()
            raise
        response.release()
        return response.status, body

    def put_back(self, key: _Key, connection: _Connection) -> None:
        if self._closed:
            connection.abort()
            return
        now = time.monotonic()
        connection.idle_since = now
        idle = self._idle.setdefault(key, [])
        # Reuse is most-recent first, so after a burst the oldest idle connections sit at
        # the bottom unused: close those past the keep-alive limit as new ones come back.
        while idle and (idle[0].closed or idle[0].idle_since < now - self._keepalive_s):
            idle.pop(0).abort()
        idle.append(connection)

    def idle_connections(self) -> int:
        return sum(len(connections) for connections in self._idle.values())

    def close_idle_except(self, keep: Collection[_Key]) -> None:
        """Close the idle connections to any address not in ``keep`` (host, port, TLS
        context): after a config reload, those no backend will ask for again."""
        for key in [key for key in self._idle if key not in keep]:
            for connection in self._idle.pop(key):
                connection.abort()

    def close(self) -> None:
        """Close every idle connection (those in use close when their answers end)."""
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()

    def _take_idle(self, key: _Key) -> _Connection | None:
        connections = self._idle.get(key)
        oldest_usable = time.monotonic() - self._keepalive_s
        while connections:
            connection = connections.pop()
            if not connection.closed and connection.idle_since >= oldest_usable:
                return connection
            connection.abort()
        return None

    async def _connect(self, host: str, port: int, tls: ssl.SSLContext | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=tls
                )
        except TimeoutError:
            waited = f"no connection within {self._connect_timeout_s:g} s"
            raise ConnectFailed(f"{host}:{port}", TimeoutError(waited)) from None
        except OSError as exc:  # a failed TLS handshake too (ssl.SSLError is an OSError)
            raise ConnectFailed(f"{host}:{port}", exc) from None
        # Seen with uvloop: connection_made had not yet run when create_connection returned.
        connection.connection_made(transport)
        return connection


def _authority(host: str, port: int, tls: ssl.SSLContext | None) -> str:
    """The Host header: the port left out where it is the scheme's own (as clients do)."""
    name = f"[{host}]" if ":" in host else host  # IPv6 literal
    if port == (443 if tls is not None else 80):
        return name
    return f"{name}:{port}"
