"""An HTTP/1.1 connection: parses requests with httptools and runs the app on each.

uvicorn still serves: it owns the sockets, the lifespan, the signals and the shutdown,
and creates one of these per connection (``uvicorn.Config(http=Http1Protocol)``). What
is replaced is the per-request work, where uvicorn spent more of the router's time than
the routing: its ``send`` is a coroutine per message that checks every header with two
regular expressions, and it writes a head and its body in two writes.

Beyond uvicorn's protocol:
- A request's head may hold at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` headers
  (431 past either; a line that never ends counts as it arrives), and must be whole
  within the keep-alive timeout of the connection going idle (a new connection
  included): a client cannot hold a connection by sending nothing, or a head slowly.
- A bad request, and an app that fails before answering, are answered in the OpenAI
  error envelope, not in text/plain.
- An HTTP/1.0 client's answer of unknown size is ended by closing the connection, as
  that version knows no chunked framing.
- An ``Upgrade`` request without a body is served as plain HTTP/1.1 (the router speaks
  no other protocol), and the connection closed after it; one with a body gets 400
  (httptools hands its body to the protocol it would switch to, not to the request).
Options of uvicorn's that the router does not use are not read: ``root_path``,
``limit_concurrency``, ``ws``, ``access_log``.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from typing import Any

import httptools
import uvicorn
from uvicorn.server import ServerState

from slm_server.router.errors import error_body
from slm_server.router.http1.exchange import App, Exchange
from slm_server.router.http1.head import error_answer

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 256
# How long a refused client's bytes are read and dropped before the connection is closed.
_LINGER_S = 2.0
# A request body buffered beyond this (the app is not reading it yet) stops reads.
_BODY_HIGH_WATER = 64 * 1024

_ASGI = {"version": "3.0", "spec_version": "2.3"}


# A request refused by the protocol itself: its status and body (the head is made when it
# is written, for its date).
Refusal = tuple[int, bytes]


def _refusal(status: int, message: str) -> Refusal:
    return status, error_body(status, message)


_BAD_REQUEST = _refusal(400, "the request is not valid HTTP/1.1")
_HEAD_TOO_LARGE = _refusal(
    431,
    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes, "
    f"or more than {MAX_HEADERS} headers",
)
_UPGRADE_WITH_BODY = _refusal(
    400, "the router does not switch protocols: send the request without an Upgrade header"
)


class Http1Protocol(asyncio.Protocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self._server_state = server_state
        self._app_state = app_state
        self._idle_timeout_s = float(config.timeout_keep_alive)
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._server: tuple[str, int] | None = None
        self._client: tuple[str, int] | None = None
        # An awaitable already done: what send returns while the client keeps up.
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.set_result(None)
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        # The exchange the app serves, the one the parser fills, and those parsed
        # in between (pipelined), oldest first.
        self._serving: Exchange | None = None
        self._parsing: Exchange | None = None
        self._queued: deque[Exchange] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_open = False  # a request's head has begun and not ended
        self._unended_bytes = 0  # received while it was, after the read it began in
        self._bad = _BAD_REQUEST  # the answer to a request the parser stops at
        self._lingering = False  # refused: what still comes is read and dropped
        self._expect_continue = False
        self._closing = False  # no request after the current one (shutdown, a bad request)
        # Said once the current request is answered: the next was bad.
        self._refusal: Refusal | None = None
        self._upgraded = False  # the parser stopped at an Upgrade: later bytes are ignored
        # Idle since (loop time), or None while a request is being served; checked by
        # one timer per connection, moved on lazily rather than re-armed per request.
        self._idle_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        self._server = _address(transport.get_extra_info("sockname"))
        self._client = _address(transport.get_extra_info("peername"))
        self._went_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for exchange in (self._serving, *self._queued):
            if exchange is not None:
                exchange.connection_lost()
        self._queued.clear()
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        # The parser and the exchanges refer back to this protocol: cycles the cyclic
        # collector (kept rare: see app) would be left to free.
        self._parser = None  # type: ignore[assignment]
        self._serving = self._parsing = None

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._refusal is not None or self._lingering:
            return  # nothing after a request that is not served is read
        head_was_open = self._head_open
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded = True
            self._closing = True
            if self._serving is None:
                self.transport.close()
            return
        except httptools.HttpParserError:
            self._refuse(self._bad)
            return
        if head_was_open and self._head_open:
            # All of it went into a head still unended, which httptools holds and tells
            # of only once a line ends: counted here, so a line that never ends is too.
            self._unended_bytes += len(data)
            if self._unended_bytes > MAX_HEAD_BYTES:
                self._refuse(_HEAD_TOO_LARGE)

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed client gets no answer anyway over HTTP/1.1

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # httptools' callbacks, in a request's order

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_open = True
        self._unended_bytes = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))
        self._count_head(len(name) + len(value) + 4)  # with ": " and the line's end
        if len(self._headers) > MAX_HEADERS:
            self._stop(_HEAD_TOO_LARGE)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._stop(_HEAD_TOO_LARGE)

    def _stop(self, answer: Refusal) -> None:
        """In a parser callback: stop parsing; the request is answered with ``answer``."""
        self._bad = answer
        raise ValueError("request refused")  # ends feed_data as a parser error

    def on_headers_complete(self) -> None:
        self._head_open = False
        parser = self._parser
        upgrade = parser.should_upgrade()
        if upgrade and _declares_body(self._headers):
            self._stop(_UPGRADE_WITH_BODY)
        http_version = parser.get_http_version()
        exchange = Exchange(
            self,
            self._scope(http_version),
            keep_alive=parser.should_keep_alive() and not self._closing and not upgrade,
            expect_continue=self._expect_continue,
            http_10=http_version == "1.0",
        )
        self._parsing = exchange
        self._idle_since = None
        if self._serving is None:
            self._serve(exchange)
        else:  # pipelined: answered in turn; read no further meanwhile
            self._queued.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None or exchange.complete:
            return  # answered already without its body: the rest is read and dropped
        if exchange.body_arrived(body) > _BODY_HIGH_WATER:
            self.pause_reading()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange.body_ended()
        self._parsing = None

    def _scope(self, http_version: str) -> dict[str, Any]:
        url = self._url
        if b"?" in url or b"%" in url or not url.startswith(b"/"):
            parsed = httptools.parse_url(url)
            raw_path: bytes = parsed.path or b"/"
            query: bytes = parsed.query or b""
        else:
            raw_path = url
            query = b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": http_version,
            "server": self._server,
            "client": self._client,
            "scheme": "http",
            "method": self._parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        if self._app_state:
            scope["state"] = self._app_state.copy()
        return scope

    # Serving

    def _serve(self, exchange: Exchange) -> None:
        self._serving = exchange
        task = self.loop.create_task(exchange.run(self.app))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def answered(self, exchange: Exchange) -> None:
        """``exchange``'s answer is complete: close, or go on to the next request."""
        self._server_state.total_requests += 1
        # Closing: after the last request queued when a bad one followed them.
        closing = self._closing and not self._queued
        if not exchange.keep_alive or closing or self.transport.is_closing():
            if self._refusal is not None:
                self._write_refusal(self._refusal)
                self._close_lingering()
            else:
                self.transport.close()
            return
        self._serving = None
        if self._queued:
            self._serve(self._queued.popleft())
            if not self._queued:
                self.resume_reading()
        else:
            self.resume_reading()
            # Also while the rest of a body answered early is read and dropped.
            self._went_idle()

    def shutdown(self) -> None:
        """The server shuts down: close now if idle, else after the current answer."""
        self._closing = True
        self._queued.clear()
        if self._serving is None:
            self.transport.close()

    def _refuse(self, answer: Refusal) -> None:
        """Answer a request that cannot be parsed, and close the connection.

        Requests before it on the connection are answered first. If the bad bytes are
        the body of the request being served, that request ends here: answered with
        ``answer`` if its own answer has not begun, else cut off by the close."""
        self._closing = True
        self.pause_reading()
        serving = self._serving
        if serving is not None and not serving.complete and self._parsing is not serving:
            if self._parsing is not None:  # a request queued whose body broke: not served
                self._queued.remove(self._parsing)
                self._parsing = None
            self._refusal = answer  # written once the requests before it are answered
            return
        if serving is None or serving.complete or not serving.started:
            if serving is not None:
                serving.connection_lost()  # the app's request ends here: its answer is this
            self._write_refusal(answer)
        self._close_lingering()

    def _write_refusal(self, refusal: Refusal) -> None:
        status, body = refusal
        self.transport.write(error_answer(status, body, self.default_headers()))

    def _close_lingering(self) -> None:
        """Close after a refusal, while the client may still be sending: closing with its
        bytes unread would reset the connection, which can destroy the refusal before
        the client reads it. So the router ends its side, then reads and drops what
        still comes, until the client closes or for ``_LINGER_S`` at most."""
        self._lingering = True
        transport = self.transport
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self.loop.call_later(_LINGER_S, transport.close)

    # Flow control

    def pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and not self._queued and self._refusal is None:
            self._read_paused = False
            self.transport.resume_reading()

    def drained(self) -> asyncio.Future[None]:
        """Resolved when the client has taken enough of what was written to it."""
        if self._drained is None:
            self._drained = self.loop.create_future()
        return self._drained

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self._server_state.default_headers  # uvicorn renews the date every second

    # Idle connections

    def _went_idle(self) -> None:
        now = self.loop.time()
        self._idle_since = now
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(now + self._idle_timeout_s, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None:
            return  # busy; the answer's end looks again
        idle_ends = since + self._idle_timeout_s
        if self.loop.time() >= idle_ends:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_at(idle_ends, self._idle_check)


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0")):
            return True
    return False


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
