"""Server-sent events: incremental parsing of an upstream stream, and framing of our own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str | None  # the `event:` field, None when absent
    data: str  # the `data:` lines joined with "\n"


# The most one event (its lines together) may take. A chat chunk is a few hundred bytes,
# and the largest events seen, a Responses stream's final event carrying the whole
# answer, stay well below this; a stream that reaches it is broken or hostile, and
# parsing it on would hold its bytes without end (a line with no newline, say).
MAX_EVENT_BYTES = 8 * 1024 * 1024


class SseTooLarge(ValueError):
    """An event (or a line still waiting for its end) exceeded the parser's limit."""


class SseParser:
    """Feed bytes as they arrive; get each event once its blank line has arrived.

    SseTooLarge once an event, or a line not yet ended, exceeds ``max_event_bytes``.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._pending = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._event_bytes = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._pending += chunk
        if b"\n" not in chunk:  # no line ends here: keep it, without re-splitting the rest
            self._check(self._event_bytes + len(self._pending))
            return []
        *lines, self._pending = self._pending.split(b"\n")
        events: list[SseEvent] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    events.append(SseEvent(self._event, "\n".join(self._data)))
                self._event, self._data, self._event_bytes = None, [], 0
            elif line.startswith(":"):
                continue  # a comment, e.g. a keep-alive
            else:
                self._event_bytes += len(raw)
                self._check(self._event_bytes)
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value
        self._check(self._event_bytes + len(self._pending))
        return events

    def _check(self, size: int) -> None:
        if size > self._max:
            raise SseTooLarge(f"an event of the stream exceeds {self._max} bytes")


def sse_frame(event: str | None, data: dict[str, Any]) -> bytes:
    """One event as SSE bytes; ``event`` None leaves out the ``event:`` line (OpenAI chat style)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event is not None else ""
    # A lone surrogate (valid as a JSON escape in a request, echoed back) has no UTF-8 form:
    # backslashreplace writes it as the same \udXXXX escape, which is valid JSON again.
    return f"{head}data: {payload}\n\n".encode("utf-8", "backslashreplace")
