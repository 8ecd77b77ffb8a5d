"""One request and its answer on a connection: the ASGI ``receive`` and ``send``.

``send`` is a plain function, not a coroutine: it writes at once and returns an
awaitable that is already done, unless the client has fallen behind (then the one
that resolves when its buffer drains). A streamed token thus costs a call and a
write, not a coroutine per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slm_server.router.asgi import WATCH_DISCONNECT, WRITE_PIECE, Message, Receive, Scope, Send
from slm_server.router.errors import error_body
from slm_server.router.http1.head import InvalidHead, error_answer, response_head

if TYPE_CHECKING:
    from slm_server.router.http1.protocol import Http1Protocol

log = logging.getLogger(__name__)

App = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

# How the answer's body goes on the wire.
_DROPPED = 0  # none may be sent (HEAD, 204, 304)
_CHUNKED = 1
_SIZED = 2  # content-length
_TO_CLOSE = 3  # an HTTP/1.0 client's body of unknown size: ended by closing

_INTERNAL_ERROR = error_body(
    500, "internal error in the router (logged with details)", code="internal_error"
)


class Exchange:
    """The request's body as it arrives and the answer as the app sends it."""

    __slots__ = (
        "_connection",
        "_head_only",
        "_held_head",
        "_http_10",
        "_mode",
        "_on_disconnect",
        "_pieces",
        "_remaining",
        "_size",
        "_waiters",
        "complete",
        "delivered_end",
        "disconnected",
        "expect_continue",
        "keep_alive",
        "more_body",
        "scope",
        "started",
    )

    def __init__(
        self,
        connection: Http1Protocol,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_continue: bool,
        http_10: bool,
    ) -> None:
        self._connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self._http_10 = http_10
        self._head_only = scope["method"] == "HEAD"
        # The request's body: pieces not yet received by the app, and their size.
        self._pieces: list[bytes] = []
        self._size = 0
        self.more_body = True  # the request's last byte has not arrived
        self.delivered_end = False  # the app has had the body's last part
        self._waiters: list[asyncio.Future[None]] = []
        self.disconnected = False
        self.started = False
        self.complete = False
        self._mode = _DROPPED
        self._remaining = 0
        # A sized answer's head waits for its first body bytes: one write, not two.
        self._held_head = b""
        self._on_disconnect: Callable[[], object] | None = None
        scope["extensions"] = {
            WATCH_DISCONNECT: self.watch_disconnect,
            WRITE_PIECE: self.write_piece,
        }

    # The request's side, fed by the connection.

    def body_arrived(self, data: bytes) -> int:
        """Keep ``data`` for the app; the size now kept."""
        self._pieces.append(data)
        self._size += len(data)
        self._wake()
        return self._size

    def body_ended(self) -> None:
        self.more_body = False
        self._wake()

    def connection_lost(self) -> None:
        if not self.complete:
            self.disconnected = True
            told, self._on_disconnect = self._on_disconnect, None
            if told is not None:
                told()
        self._wake()

    def watch_disconnect(self, callback: Callable[[], object] | None) -> None:
        """Have ``callback`` called once, should the client leave before the answer is
        complete (see WATCH_DISCONNECT); None: no more. Called at once if it has left."""
        if self.disconnected and callback is not None:
            callback()
            return
        self._on_disconnect = callback

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self) -> Message:
        if self.expect_continue:
            self.expect_continue = False
            if not self.started and not self._connection.transport.is_closing():
                self._connection.transport.write(_CONTINUE)
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if self._pieces or (not self.more_body and not self.delivered_end):
                pieces = self._pieces
                body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                self._pieces = []
                self._size = 0
                more = self.more_body
                self.delivered_end = not more
                self._connection.resume_reading()
                return {"type": "http.request", "body": body, "more_body": more}
            # Nothing yet; after the body's end, only a disconnect or the answer's end.
            # Each receive waits on its own future: two at once (a watcher task and a
            # reader) both wake, and either may be cancelled alone.
            waiter = self._connection.loop.create_future()
            self._waiters.append(waiter)
            self._connection.resume_reading()
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    # The answer's side, sent by the app.

    def send(self, message: Message) -> Awaitable[None]:
        connection = self._connection
        if self.disconnected:
            return connection.ready  # nobody to tell: the app learns it from receive
        if not self.started:
            self._start(message)
        else:
            self._body(message)
        if connection.write_paused:
            return connection.drained()
        return connection.ready

    def write_piece(self, piece: bytes) -> bool:
        """A piece of the answer's body with more to follow, written at once (WRITE_PIECE);
        False once the client has fallen behind."""
        connection = self._connection
        if self.disconnected:
            return True  # nobody to tell: the app learns it from receive, or a callback
        if self._mode == _CHUNKED and not self.complete:
            connection.transport.write(b"".join((b"%x\r\n" % len(piece), piece, b"\r\n")))
        else:
            self._body({"type": "http.response.body", "body": piece, "more_body": True})
        return not connection.write_paused

    def _start(self, message: Message) -> None:
        if message["type"] != "http.response.start":
            raise RuntimeError(f"expected http.response.start, got {message['type']}")
        status = message["status"]
        bodiless = self._head_only or status < 200 or status in (204, 304)
        try:
            head, framing = response_head(
                status,
                message.get("headers", ()),
                self._connection.default_headers(),
                keep_alive=self.keep_alive,
                http_10=self._http_10,
                bodiless=bodiless,
            )
        except InvalidHead as exc:
            raise RuntimeError(f"cannot send this answer: {exc}") from None
        self.started = True
        self.expect_continue = False
        self.keep_alive = framing.keep_alive
        if bodiless:
            self._mode = _DROPPED
        elif framing.chunked:
            self._mode = _CHUNKED
        elif framing.length >= 0:
            self._mode = _SIZED
            self._remaining = framing.length
            self._held_head = head
            return
        else:
            self._mode = _TO_CLOSE
        self._connection.transport.write(head)

    def _body(self, message: Message) -> None:
        if self.complete:
            raise RuntimeError(f"{message['type']} sent after the answer was complete")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {message['type']}")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        mode = self._mode
        if mode == _CHUNKED:
            if body:
                out = b"".join((b"%x\r\n" % len(body), body, b"\r\n" if more else b"\r\n0\r\n\r\n"))
            else:
                out = b"" if more else _LAST_CHUNK
        elif mode == _SIZED:
            self._remaining -= len(body)
            if self._remaining < 0:
                self._connection.transport.close()
                raise RuntimeError("the answer's body is longer than its content-length")
            if self._held_head:
                out = self._held_head + body
                self._held_head = b""
            else:
                out = body
            if not more and self._remaining:
                self._connection.transport.write(out)
                self._connection.transport.close()  # the client would wait for the rest
                raise RuntimeError("the answer's body is shorter than its content-length")
        elif mode == _TO_CLOSE:
            out = body
        else:
            out = b""
        if out:
            self._connection.transport.write(out)
        if not more:
            self.complete = True
            self._wake()  # a receive waiting for more ends: there will be none
            self._connection.answered(self)

    # The app's run.

    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            log.info("%s %s: cancelled", self.scope["method"], self.scope["path"])
            self._abandon()
        except Exception:
            log.exception("%s %s: unexpected error", self.scope["method"], self.scope["path"])
            self._abandon()
        else:
            if not self.complete and not self.disconnected:
                log.error(
                    "%s %s: the answer was left unfinished",
                    self.scope["method"],
                    self.scope["path"],
                )
                self._abandon()
        finally:
            # Both refer back to this exchange: left, each would be a reference cycle
            # per request, which only the cyclic collector (kept rare: see app) frees.
            self.scope.pop("extensions", None)
            self._on_disconnect = None

    def _abandon(self) -> None:
        """End an answer the app did not end: a 500 if nothing went out, else the
        connection is closed, so that the client can tell the answer is cut short."""
        if self.complete or self.disconnected:
            return
        transport = self._connection.transport
        if not self.started or self._held_head:  # nothing of it went out: it can be a 500
            defaults = self._connection.default_headers()
            answer = error_answer(
                500, _INTERNAL_ERROR, defaults, http_10=self._http_10, bodiless=self._head_only
            )
            transport.write(answer)
        self.complete = True
        transport.close()
