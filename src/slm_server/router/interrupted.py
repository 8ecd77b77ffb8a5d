"""Ending a request cut short, in its protocol's own way.

The server cancels the requests still running when the shutdown grace is over; a request
may also fail on its own (a router error, a bug). A client must then learn that its answer
ends here, not be left with a connection that just drops (or, worse, a stream that looks
finished): the status line may already be out, so a stream ends with the protocol's error
event, as any failure after the headers does.
"""

from __future__ import annotations

import contextlib
import json
import re

from slm_server.router.anthropic_errors import ANTHROPIC_PATHS, anthropic_error_payload
from slm_server.router.asgi import ENDED_IN_ERROR, Message, Send, send_error
from slm_server.router.errors import RouterError, ShuttingDown
from slm_server.router.response_start import is_event_stream

RESPONSES = "/v1/responses"
_SEQUENCE_NUMBER = re.compile(rb'"sequence_number":\s*(\d+)')


async def end_cut_short(send: Send, path: str, start: Message | None, last: Message | None) -> None:
    """End the answer after ``start`` and ``last`` (the first and latest messages sent).

    Not started: a 503 in the endpoint's error shape. A stream: its error event, then the
    end. A plain body half sent cannot be ended well: the server closes the connection.
    """
    error = ShuttingDown("the server is shutting down; this request was cut short")
    await end_with_error(send, path, start, last, error)


async def end_with_error(
    send: Send, path: str, start: Message | None, last: Message | None, error: RouterError
) -> None:
    """End the answer after ``start`` and ``last`` with ``error``, as ``end_cut_short`` does.

    For any failure of a request (the shutdown's cut, a router error, a bug): before the
    status line, an error answer in the path's shape; after it, the stream's error event.
    """
    anthropic = path in ANTHROPIC_PATHS
    with contextlib.suppress(OSError, RuntimeError):  # the client left, or the answer was done
        if start is None:
            body = anthropic_error_payload(error.status, error.body()) if anthropic else None
            await send_error(send, error, body)
        elif last is not None and not last.get("more_body", False):
            return  # complete already
        elif is_event_stream(start):
            sent = b"" if last is None else bytes(last.get("body", b""))
            if anthropic:
                payload = anthropic_error_payload(error.status, error.body())
                event = b"event: error\ndata: " + payload
            elif path == RESPONSES:
                event = b"event: error\ndata: " + _responses_error_event(error, sent)
            else:
                event = b"data: " + error.body()
            gap = b"" if not sent or sent.endswith(b"\n\n") else b"\n\n"  # after a whole event
            body = gap + event + b"\n\n"
            end = {"type": "http.response.body", "body": body, "more_body": False}
            await send({**end, ENDED_IN_ERROR: True})


def _responses_error_event(error: RouterError, sent: bytes) -> bytes:
    """The Responses stream's ``error`` event (type, code, message, param, sequence_number).

    It carries the OpenAI envelope's ``error`` object too: that is what the OpenAI SDK
    raises on (an APIError with the message), where it would hand the bare event to the
    caller's loop as one more event. Its number follows the last one sent, if seen.
    """
    numbers = _SEQUENCE_NUMBER.findall(sent)
    envelope = error.error_object()
    event = {
        "type": "error",
        "code": envelope["code"],
        "message": envelope["message"],
        "param": envelope["param"],
        "sequence_number": int(numbers[-1]) + 1 if numbers else 0,
        "error": envelope,
    }
    return json.dumps(event).encode()
