"""Server-sent events: incremental parsing of an upstream stream, and framing of our own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str | None  # the `event:` field, None when absent
    data: str  # the `data:` lines joined with "\n"


class SseParser:
    """Feed bytes as they arrive; get each event once its blank line has arrived."""

    def __init__(self) -> None:
        self._pending = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        events: list[SseEvent] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    events.append(SseEvent(self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(":"):
                continue  # a comment, e.g. a keep-alive
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value
        return events


def sse_frame(event: str | None, data: dict[str, Any]) -> bytes:
    """One event as SSE bytes; ``event`` None leaves out the ``event:`` line (OpenAI chat style)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {payload}\n\n".encode()
