"""The router's own log lines, kept in memory for ``GET /admin/logs/router``.

A logging handler next to the one writing stderr: the same lines, in the same format
(text or JSON). Records may come from any thread (uvicorn's, the log file writers'), so a
line is handed to the event loop's thread, where the feed lives; the hand-over is bounded
(lines beyond ``max_pending_chars`` are dropped and counted) and costs one wake-up of the
loop per batch, none at all for lines logged on the loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from slm_server.log_feed import LogFeed, dropped_note
from slm_server.log_format import TextFormatter

_MAX_PENDING_CHARS = 1024 * 1024
_TOO_FAST = "the router could not keep up"


class RouterLog(logging.Handler):
    """Keeps the router's formatted log lines in ``feed``; ``attach`` it to the serving loop."""

    def __init__(
        self,
        formatter: logging.Formatter | None = None,
        max_pending_chars: int = _MAX_PENDING_CHARS,
    ) -> None:
        super().__init__()
        self.setFormatter(formatter or TextFormatter())
        self.feed = LogFeed()
        self._max_pending = max_pending_chars
        self._pending_lock = threading.Lock()
        # Guarded by _pending_lock: lines not yet in the feed, and the loop to hand them to.
        self._pending: list[str] = []
        self._pending_chars = 0
        self._dropped = 0
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Feed lines on ``loop`` (called on it) from now on, those logged before first."""
        with self._pending_lock:
            self._loop, self._loop_thread = loop, threading.get_ident()
        self._deliver()

    def detach(self) -> None:
        """The loop is ending: lines wait (bounded) until attached again."""
        with self._pending_lock:
            self._loop = self._loop_thread = None
            self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        lines = text.split("\n")  # a traceback's lines each as a line of their own
        with self._pending_lock:
            size = sum(len(line) + 1 for line in lines)
            # Once one is dropped, so are later ones until delivered: the note goes where
            # they were.
            if self._dropped or self._pending_chars + size > self._max_pending:
                self._dropped += len(lines)
                return
            self._pending += lines
            self._pending_chars += size
            loop = self._loop
            if loop is None or self._scheduled:
                return
            self._scheduled = True
            on_loop = threading.get_ident() == self._loop_thread
        try:
            if on_loop:
                loop.call_soon(self._deliver)
            else:
                loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: the lines wait for the next one
            with self._pending_lock:
                self._scheduled = False

    def _deliver(self) -> None:
        with self._pending_lock:
            lines, self._pending, self._pending_chars = self._pending, [], 0
            dropped, self._dropped = self._dropped, 0
            self._scheduled = False
        for line in lines:
            self.feed.publish(line)
        if dropped:
            self.feed.publish(dropped_note(dropped, _TOO_FAST))


class FormattedOnce(logging.Formatter):
    """``inner``'s format, done once per record for all the handlers sharing this: a
    line costs the router its formatting once, not once per handler."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner
        # The last record and its text, replaced as one: handlers on other threads may
        # format other records meanwhile, and then format their own again.
        self._last: tuple[logging.LogRecord | None, str] = (None, "")

    def format(self, record: logging.LogRecord) -> str:
        last, text = self._last
        if last is record:
            return text
        text = self._inner.format(record)
        self._last = (record, text)
        return text


def install(root: logging.Logger | None = None) -> RouterLog:
    """A RouterLog on ``root`` (the root logger), formatting as its first handler does
    and sharing that handler's work."""
    root = root or logging.getLogger()
    first = next((h for h in root.handlers if h.formatter is not None), None)
    if first is None or first.formatter is None:
        handler = RouterLog()
    else:
        shared = FormattedOnce(first.formatter)
        first.setFormatter(shared)
        handler = RouterLog(shared)
    root.addHandler(handler)
    return handler
