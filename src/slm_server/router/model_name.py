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
from slm_server.translate.sse import MAX_EVENT_BYTES

_DATA = b"data:"


def restoring_model_name(send: Send, served: str | None, asked: str) -> Send:
    """``send``, with ``model`` equal to ``served`` in the response body turned into ``asked``.

    ``served`` None: any name is, for servers that answer another than they were asked
    (hosted APIs name a dated version: ``gpt-4o`` answers ``gpt-4o-2024-08-06``)."""
    held_start: Message | None = None  # a JSON answer's head: its content-length will change
    held_body: list[bytes] = []
    lines: _StreamLines | None = None  # for a stream

    async def send_restored(message: Message) -> None:
        nonlocal held_start, lines
        if message["type"] == "http.response.start":
            if is_event_stream(message):
                lines = _StreamLines(served, asked)
                await send(message)
            else:
                held_start = message
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if lines is not None:
            await send({**message, "body": lines.restored(body, more)})
            return
        held_body.append(body)
        if more or held_start is None:
            return
        whole = b"".join(held_body)
        restored = _renamed_json(whole, served, asked) or whole
        await send(_with_length(held_start, len(restored)))
        await send({"type": "http.response.body", "body": restored})

    return send_restored


class _StreamLines:
    """A stream's pieces, restored line by line; a line is held only until its newline.

    At most ``MAX_EVENT_BYTES`` of a line is held: one longer than any event the router
    reads cannot be an answer it would rename, so it goes on as it comes. The pieces of a
    line are joined once, at its newline, never rescanned piece after piece.
    """

    __slots__ = ("_asked", "_held", "_held_bytes", "_passing", "_served")

    def __init__(self, served: str | None, asked: str) -> None:
        self._served = served
        self._asked = asked
        self._held: list[bytes] = []  # the start of a line whose newline has not come
        self._held_bytes = 0
        self._passing = False  # in a line too long to hold, passed on unchanged to its end

    def restored(self, piece: bytes, more: bool) -> bytes:
        """What to send for ``piece``; with ``more`` False, everything left too."""
        end = piece.rfind(b"\n") + 1
        head, tail = piece[:end], piece[end:]
        out = b""
        if head:
            if self._passing:  # the long line's end goes on as it is
                first = head.index(b"\n") + 1
                out, head, self._passing = head[:first], head[first:], False
            self._held.append(head)
            *lines, _ = b"".join(self._held).split(b"\n")
            self._held, self._held_bytes = [], 0
            out += b"".join(self._restored_line(line) + b"\n" for line in lines)
        if self._passing:
            out += tail
        elif tail:
            self._held.append(tail)
            self._held_bytes += len(tail)
            if self._held_bytes > MAX_EVENT_BYTES:
                out += self._release()
                self._passing = True
        if not more:  # the last line had no newline: passed on as it is
            out += self._release()
        return out

    def _release(self) -> bytes:
        held = b"".join(self._held)
        self._held, self._held_bytes = [], 0
        return held

    def _restored_line(self, line: bytes) -> bytes:
        """One line of a stream; only a ``data:`` line naming the served model changes."""
        if not line.startswith(_DATA):
            return line
        ending = b"\r" if line.endswith(b"\r") else b""
        data = line[len(_DATA) : len(line) - len(ending)]
        renamed = _renamed_json(data, self._served, self._asked)
        return line if renamed is None else b"data: " + renamed + ending


def _with_length(start: Message, length: int) -> Message:
    headers = [(n, v) for n, v in start.get("headers", ()) if n.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(length).encode())]}


def _renamed_json(body: bytes, served: str | None, asked: str) -> bytes | None:
    """``body`` re-encoded with ``asked`` as its model; None when it does not name ``served``
    (with ``served`` None: when it names no model, or ``asked`` already)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None  # not JSON (an error page, `[DONE]`): passed on as it is
    if not isinstance(payload, dict):
        return None
    model = payload.get("model")
    if not isinstance(model, str) or model == asked or (served is not None and model != served):
        return None
    payload["model"] = asked
    return _dumps(payload)


def _dumps(payload: Any) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate in the text: escaped, it is still valid JSON
        return json.dumps(payload).encode()
