"""The client's model name put back into answers from servers that know another one.

mlx_lm.server accepts only its own model path as ``model``, so requests to it are
rewritten (``routing.router_changes``), and it names that path in its answers. The
client asked for the entry's id and reads ``model`` back (the OpenAI SDK's
``reply.model``, a chunk's ``model``), so the answers are rewritten on the way out:
a whole JSON body, or each event of a stream. Only such backends pay for this.
"""

from __future__ import annotations

import json
from typing import Any

from slm_server.router.asgi import Message, Send
from slm_server.translate.sse import SseParser, sse_frame

_EVENT_STREAM = b"text/event-stream"


def restoring_model_name(send: Send, served: str, asked: str) -> Send:
    """``send``, with ``model`` equal to ``served`` in the response body turned into ``asked``."""
    held_start: Message | None = None  # a JSON answer's head: its content-length will change
    held_body: list[bytes] = []
    events: SseParser | None = None

    async def send_restored(message: Message) -> None:
        nonlocal held_start, events
        if message["type"] == "http.response.start":
            if _content_type(message).startswith(_EVENT_STREAM):
                events = SseParser()
                await send(message)
            else:
                held_start = message
            return
        body: bytes = message.get("body", b"")
        if events is not None:
            reframed = b"".join(
                _restored_event(e.event, e.data, served, asked) for e in events.feed(body)
            )
            await send({**message, "body": reframed})
            return
        held_body.append(body)
        if message.get("more_body", False) or held_start is None:
            return
        restored = _restored_json(b"".join(held_body), served, asked)
        await send(_with_length(held_start, len(restored)))
        await send({"type": "http.response.body", "body": restored})

    return send_restored


def _content_type(start: Message) -> bytes:
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value).lower()
    return b""


def _with_length(start: Message, length: int) -> Message:
    headers = [(n, v) for n, v in start.get("headers", ()) if n.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(length).encode())]}


def _renamed(payload: Any, served: str, asked: str) -> bool:
    if isinstance(payload, dict) and payload.get("model") == served:
        payload["model"] = asked
        return True
    return False


def _restored_json(body: bytes, served: str, asked: str) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body  # not JSON (an error page, say): passed on as it is
    if not _renamed(payload, served, asked):
        return body
    return json.dumps(payload, ensure_ascii=False).encode()


def _restored_event(event: str | None, data: str, served: str, asked: str) -> bytes:
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None  # `[DONE]`
    if payload is None or not _renamed(payload, served, asked):
        head = f"event: {event}\n" if event is not None else ""
        lines = "".join(f"data: {line}\n" for line in data.split("\n"))
        return f"{head}{lines}\n".encode()
    return sse_frame(event, payload)
