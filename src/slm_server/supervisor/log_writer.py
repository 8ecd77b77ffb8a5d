"""Writing a backend's log file in a thread of its own, so a slow disk never stalls the router.

The router's event loop hands lines over and returns at once; the thread writes them in
order, as many per write as have queued up, and flushes after each write so that someone
tailing the file sees a line within milliseconds. What waits is bounded: past
``max_pending_chars`` new lines are dropped, and the file says how many.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class LogWriter:
    """One thread appending lines to ``path``; ``rotate`` is called once it holds ``max_bytes``."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        rotate: Callable[[], None],
        max_pending_chars: int,
        dropped_note: Callable[[int], str],
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._rotate = rotate
        self._max_pending = max_pending_chars
        self._dropped_note = dropped_note
        self._lock = threading.Lock()
        # Two conditions on the one lock: a line for the writer must never wake a flush instead.
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        # Guarded by _lock: what waits to be written, and the progress made.
        self._pending: list[str] = []
        self._pending_chars = 0
        self._dropped = 0
        self._accepted = 0  # lines handed over (dropped ones included)
        self._done = 0  # of those, lines written or given up on
        self._closing = False
        self._file: IO[str] | None = None
        self._size = 0
        self._rotates = True  # a regular file; a FIFO or a device is never rotated
        self._thread = threading.Thread(target=self._run, name=f"log {path.name}", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        """Queue ``line`` (without its line end); never blocks for longer than a lock swap."""
        with self._lock:
            self._accepted += 1
            if self._pending_chars + len(line) > self._max_pending and self._pending:
                self._dropped += 1
                return
            self._pending.append(line)
            self._pending_chars += len(line) + 1
            self._work.notify()

    async def flush(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the lines queued so far are written; False if not."""
        with self._lock:
            target = self._accepted
            if self._done >= target:
                return True
        return await asyncio.to_thread(self._wait_done, target, timeout_s)

    async def aclose(self, timeout_s: float) -> bool:
        """Write what is queued, then close the file; False if that took longer than allowed.

        A file that blocks for good (a FIFO nobody reads) keeps its thread, a daemon, and
        what it held: a caller never waits longer than ``timeout_s``.
        """
        with self._lock:
            self._closing = True
            self._work.notify()
        await asyncio.to_thread(self._thread.join, timeout_s)
        return not self._thread.is_alive()

    def _wait_done(self, target: int, timeout_s: float) -> bool:
        with self._lock:
            return self._progress.wait_for(lambda: self._done >= target, timeout_s)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: bool(self._pending) or self._closing)
                batch, self._pending, self._pending_chars = self._pending, [], 0
                dropped, self._dropped = self._dropped, 0
                closing = self._closing and not batch
            if closing:
                self._close_file()
                return
            if dropped:  # they came after everything in the batch: the note goes last
                batch.append(self._dropped_note(dropped))
            self._write("".join(line + "\n" for line in batch))
            with self._lock:
                self._done += len(batch) - (1 if dropped else 0) + dropped
                self._progress.notify_all()

    def _write(self, text: str) -> None:
        try:
            file = self._open()
            file.write(text)
            file.flush()
        except OSError as exc:  # a full disk, a removed directory: the lines are lost
            log.warning("cannot write %s: %s", self.path, exc)
            self._close_file()
            return
        self._size += len(text)
        if self._rotates and self._size >= self._max_bytes:
            self._close_file()
            try:
                self._rotate()
            except OSError as exc:
                log.warning("cannot rotate %s: %s", self.path, exc)

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", errors="replace")
            try:
                self._size, self._rotates = self._file.tell(), True
            except OSError:  # not a regular file (a FIFO, /dev/stdout): nothing to rotate
                self._size, self._rotates = 0, False
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("cannot close %s: %s", self.path, exc)
            self._file = None
