"""How a request cut short by the shutdown ends, for each state its answer is in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_server.router.asgi import ENDED_IN_ERROR, Message
from slm_server.router.interrupted import end_cut_short

SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
}
JSON_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"a/b")]}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:] if "body" in m)


async def test_not_answered_yet_gets_a_503_in_the_openai_envelope() -> None:
    send = Recorder()
    await end_cut_short(send, "/v1/chat/completions", None, None)
    assert send.sent[0]["status"] == 503
    assert json.loads(send.body())["error"] == {
        "message": "the server is shutting down; this request was cut short",
        "type": "server_error",
        "param": None,
        "code": "shutting_down",
    }


async def test_not_answered_yet_on_anthropic_messages_gets_anthropics_shape() -> None:
    send = Recorder()
    await end_cut_short(send, "/v1/messages", None, None)
    assert send.sent[0]["status"] == 503
    body = json.loads(send.body())
    assert body["type"] == "error" and "shutting down" in body["error"]["message"]


@pytest.mark.parametrize(
    ("last_piece", "gap"),
    [
        (b'data: {"choices": []}\n\n', b""),
        (b'data: {"choi', b"\n\n"),  # cut mid-event: the error is an event of its own
        (None, b""),  # only the headers were out
    ],
)
async def test_a_stream_ends_with_an_error_event(last_piece: bytes | None, gap: bytes) -> None:
    send = Recorder()
    last = None
    if last_piece is not None:
        last = {"type": "http.response.body", "body": last_piece, "more_body": True}
    await end_cut_short(send, "/v1/chat/completions", SSE_START, last)
    [message] = send.sent
    assert message["more_body"] is False
    assert message[ENDED_IN_ERROR] is True  # the metrics count it as failed, not 2xx
    body: bytes = message["body"]
    assert body.startswith(gap + b"data: {") and body.endswith(b"\n\n")
    event = json.loads(body.removeprefix(gap).removeprefix(b"data: "))
    assert event["error"]["code"] == "shutting_down"


async def test_an_anthropic_stream_ends_with_its_error_event() -> None:
    send = Recorder()
    last = {"type": "http.response.body", "body": b"event: ping\ndata: {}\n\n", "more_body": True}
    await end_cut_short(send, "/v1/messages", SSE_START, last)
    [message] = send.sent
    event, data = message["body"].decode().strip().split("\n")
    assert event == "event: error"
    payload: dict[str, Any] = json.loads(data.removeprefix("data: "))
    assert payload["type"] == "error" and "shutting down" in payload["error"]["message"]


async def test_a_responses_stream_ends_with_the_responses_error_event() -> None:
    send = Recorder()
    piece = b'event: response.output_text.delta\ndata: {"sequence_number": 7, "delta": "Hi"}\n\n'
    last = {"type": "http.response.body", "body": piece, "more_body": True}
    await end_cut_short(send, "/v1/responses", SSE_START, last)
    [message] = send.sent
    event, data = message["body"].decode().strip().split("\n")
    assert event == "event: error"
    payload: dict[str, Any] = json.loads(data.removeprefix("data: "))
    assert {k: payload[k] for k in ("type", "code", "param", "sequence_number")} == {
        "type": "error",
        "code": "shutting_down",
        "param": None,
        "sequence_number": 8,
    }
    assert "shutting down" in payload["message"]
    assert payload["error"]["code"] == "shutting_down"  # what the OpenAI SDK raises on


@pytest.mark.parametrize(
    ("start", "last"),
    [
        (SSE_START, {"type": "http.response.body", "body": b"data: [DONE]\n\n"}),  # complete
        (JSON_START, {"type": "http.response.body", "body": b'{"id', "more_body": True}),
    ],
)
async def test_nothing_is_added_to_a_complete_answer_or_a_half_sent_body(
    start: Message, last: Message
) -> None:
    """A plain body cannot be ended well: the server closes the connection instead."""
    send = Recorder()
    await end_cut_short(send, "/v1/chat/completions", start, last)
    assert send.sent == []


async def test_a_client_already_gone_is_no_error() -> None:
    async def gone(message: Message) -> None:
        raise OSError("connection reset")

    await end_cut_short(gone, "/v1/chat/completions", SSE_START, None)
