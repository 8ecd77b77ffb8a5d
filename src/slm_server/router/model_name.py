"""The client's model name put back into answers from servers that know another one.

mlx_lm.server accepts only its own model path as ``model``, so requests to it are
rewritten (``routing.router_changes``), and it names that path in its answers. The
client asked for the entry's id and reads ``model`` back (the OpenAI SDK's
``reply.model``, a chunk's ``model``), so the answers are rewritten on the way out:
a whole JSON body, or each ``data:`` line of a stream. Everything else (comments such
as keep-alives, other fields, line endings) passes byte for byte. Only such backends
pay for this.
"""

from __future__ import annotations

import json
from typing import Any

from slm_server.router.asgi import Message, Send
from slm_server.router.response_start import is_event_stream

_DATA = b"data:"


def restoring_model_name(send: Send, served: str, asked: str) -> Send:
    """``send``, with ``model`` equal to ``served`` in the response body turned into ``asked``."""
    held_start: Message | None = None  # a JSON answer's head: its content-length will change
    held_body: list[bytes] = []
    partial_line: bytes | None = None  # set for a stream: the end of its last piece

    async def send_restored(message: Message) -> None:
        nonlocal held_start, partial_line
        if message["type"] == "http.response.start":
            if is_event_stream(message):
                partial_line = b""
                await send(message)
            else:
                held_start = message
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if partial_line is not None:
            *lines, partial_line = (partial_line + body).split(b"\n")
            restored = b"".join(_restored_line(line, served, asked) + b"\n" for line in lines)
            if not more:  # the last line had no newline: passed on as it is
                restored, partial_line = restored + partial_line, b""
            await send({**message, "body": restored})
            return
        held_body.append(body)
        if more or held_start is None:
            return
        whole = b"".join(held_body)
        restored = _renamed_json(whole, served, asked) or whole
        await send(_with_length(held_start, len(restored)))
        await send({"type": "http.response.body", "body": restored})

    return send_restored


def _with_length(start: Message, length: int) -> Message:
    headers = [(n, v) for n, v in start.get("headers", ()) if n.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(length).encode())]}


def _renamed_json(body: bytes, served: str, asked: str) -> bytes | None:
    """``body`` re-encoded with ``asked`` as its model; None when it does not name ``served``."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None  # not JSON (an error page, `[DONE]`): passed on as it is
    if not (isinstance(payload, dict) and payload.get("model") == served):
        return None
    payload["model"] = asked
    return _dumps(payload)


def _restored_line(line: bytes, served: str, asked: str) -> bytes:
    """One line of a stream; only a ``data:`` line naming ``served`` changes."""
    if not line.startswith(_DATA):
        return line
    ending = b"\r" if line.endswith(b"\r") else b""
    renamed = _renamed_json(line[len(_DATA) : len(line) - len(ending)], served, asked)
    return line if renamed is None else b"data: " + renamed + ending


def _dumps(payload: Any) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate in the text: escaped, it is still valid JSON
        return json.dumps(payload).encode()
