"""What an answer's ``http.response.start`` message says about its body."""

from __future__ import annotations

from slm_server.router.asgi import Message

_EVENT_STREAM = b"text/event-stream"


def content_type(start: Message) -> bytes:
    """The answer's content type, lower-cased; empty when it has none."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value).lower()
    return b""


def is_event_stream(start: Message) -> bool:
    """True for a server-sent event stream, which is ended and rewritten event by event."""
    return content_type(start).startswith(_EVENT_STREAM)
