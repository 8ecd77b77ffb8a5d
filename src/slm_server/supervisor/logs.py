"""A backend's output: a rotated log file plus the last lines kept in memory."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from slm_server.config import ModelEntry
from slm_server.log_feed import NOTE_PREFIX, LogFeed, dropped_note
from slm_server.supervisor.log_writer import LogWriter

# Rotation keeps a chatty backend from filling the disk: at most
# (1 + _KEEP_ROTATED) * _MAX_BYTES per backend.
_MAX_BYTES = 10 * 1024 * 1024
_KEEP_ROTATED = 2
# Lines waiting for a slow disk; beyond this they are dropped (and counted in the file).
_MAX_PENDING_CHARS = 4 * 1024 * 1024
# Kept in memory for `GET /admin/logs/{role}` and the health report's last lines.
_TAIL_LINES = 1000
_TAIL_CHARS = 1024 * 1024


def log_file_name(entry: ModelEntry) -> str:
    """``logs/<id>.log`` (a replica's: ``<id>@<i>.log``), with the ``/`` of Hugging Face
    style ids made safe."""
    name = entry.id.replace("/", "--").replace("\\", "--")
    return f"{name}@{entry.replica}.log" if entry.replica is not None else f"{name}.log"


class BackendLog:
    """Appends lines to ``path`` (rotated by size), keeps the last ``tail_lines`` and feeds
    them to live followers (``feed``).

    ``write`` only queues the line: a thread writes the file, so a slow or blocked disk
    never holds up the event loop that calls it; followers take it without waiting too.
    """

    def __init__(
        self,
        path: Path,
        tail_lines: int = _TAIL_LINES,
        max_pending_chars: int = _MAX_PENDING_CHARS,
    ) -> None:
        self.path = path
        self.feed = LogFeed(tail_lines, _TAIL_CHARS)
        self._max_pending = max_pending_chars
        self._writer: LogWriter | None = None

    def write(self, line: str) -> None:
        line = line.rstrip("\r\n")
        self.feed.publish(line)
        if self._writer is None:
            self._writer = LogWriter(
                self.path,
                max_bytes=_MAX_BYTES,
                rotate=self._rotate,
                max_pending_chars=self._max_pending,
                dropped_note=partial(dropped_note, why="the log file could not keep up"),
            )
        self._writer.put(line)

    def note(self, text: str) -> None:
        """A line of the supervisor's own among the backend's output."""
        self.write(NOTE_PREFIX + text)

    def end(self, why: str) -> None:
        """No more lines will come (the process that wrote them is gone for good): say
        ``why`` as the last line, and end the followers after it."""
        self.note(f"{why}; this log ends here")
        self.feed.end_followers()

    def tail(self, lines: int = 20) -> list[str]:
        return self.feed.tail(lines)

    def last_output(self) -> str | None:
        """The backend's latest non-blank line, if it has written one since the last note."""
        for line in self.feed.latest():
            if line.startswith(NOTE_PREFIX):
                return None
            if line.strip():
                return line
        return None

    async def flush(self, timeout_s: float) -> bool:
        """Wait (bounded) until every line written so far is in the file."""
        return self._writer is None or await self._writer.flush(timeout_s)

    async def aclose(self, timeout_s: float) -> bool:
        """Write what is queued and close the file (bounded); a later ``write`` opens it again."""
        writer, self._writer = self._writer, None
        return writer is None or await writer.aclose(timeout_s)

    def _rotate(self) -> None:
        """Called by the writer's thread, with the file closed."""
        for n in range(_KEEP_ROTATED, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if newer.exists():
                newer.replace(older)
