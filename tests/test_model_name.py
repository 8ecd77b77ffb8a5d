"""Answers of a server that knows its model by a path get the client's model name back."""

from __future__ import annotations

import itertools
import json
from typing import Any

from slm_server.router.asgi import Message
from slm_server.router.model_name import restoring_model_name
from slm_server.translate.sse import MAX_EVENT_BYTES, SseParser

SERVED = "/models/gemma-3-270m-mlx"
ASKED = "gemma-mlx"


class Client:
    """What reaches the client through the wrapped ``send``."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def start(content_type: bytes, length: int | None = None) -> Message:
    headers = [(b"content-type", content_type), (b"x-backend", b"kept")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": 200, "headers": headers}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def relay(messages: list[Message]) -> Client:
    client = Client()
    send = restoring_model_name(client.send, served=SERVED, asked=ASKED)
    for message in messages:
        await send(message)
    return client


async def test_json_answer_names_the_asked_model_with_a_matching_length() -> None:
    answer = json.dumps({"id": "c1", "model": SERVED, "choices": [{"text": "Paris é"}]})
    raw = answer.encode()
    client = await relay([start(b"application/json", len(raw)), body(raw)])
    restored = json.loads(client.body())
    assert restored == {"id": "c1", "model": ASKED, "choices": [{"text": "Paris é"}]}
    assert client.headers()[b"content-length"] == str(len(client.body())).encode()
    assert client.headers()[b"x-backend"] == b"kept"
    assert client.messages[-1].get("more_body", False) is False


async def test_json_body_in_several_pieces_is_restored_whole() -> None:
    raw = json.dumps({"model": SERVED, "object": "text_completion"}).encode()
    pieces = [body(raw[:10], more=True), body(raw[10:], more=True), body(b"")]
    client = await relay([start(b"application/json", len(raw)), *pieces])
    assert json.loads(client.body())["model"] == ASKED


async def test_other_answers_pass_unchanged() -> None:
    for raw in (b"<html>Bad Gateway</html>", json.dumps({"model": "other"}).encode(), b"[1, 2]"):
        client = await relay([start(b"application/json", len(raw)), body(raw)])
        assert client.body() == raw
        assert client.headers()[b"content-length"] == str(len(raw)).encode()


def chunk(text: str) -> str:
    payload = {
        "object": "chat.completion.chunk",
        "model": SERVED,
        "choices": [{"delta": {"content": text}}],
    }
    return f"data: {json.dumps(payload)}\n\n"


async def test_stream_events_are_restored_even_when_split_across_pieces() -> None:
    stream = (chunk("Hel") + ": keep-alive\n\n" + chunk("lo") + "data: [DONE]\n\n").encode()
    cuts = [0, 7, 50, len(stream) - 3, len(stream)]  # inside events and inside `[DONE]`
    pieces = [body(stream[a:b], more=True) for a, b in itertools.pairwise(cuts)]
    client = await relay([start(b"text/event-stream; charset=utf-8"), *pieces, body(b"")])
    events = SseParser().feed(client.body())
    payloads: list[Any] = [json.loads(e.data) for e in events if e.data != "[DONE]"]
    assert [p["model"] for p in payloads] == [ASKED, ASKED]
    assert [p["choices"][0]["delta"]["content"] for p in payloads] == ["Hel", "lo"]
    assert events[-1].data == "[DONE]"
    assert b": keep-alive\n\n" in client.body()
    assert b"content-length" not in client.headers()


async def test_stream_lines_other_than_the_model_pass_byte_for_byte() -> None:
    stream = (
        b": keepalive 512/4096\r\n\r\n"  # mlx_lm.server's, while it reads a long prompt
        b"event: note\nid: 7\n"
        b'data: {"model": "/models/gemma-3-270m-mlx"}\r\n\r\n'
        b"data: a\ndata: b\n\n"
    )
    client = await relay([start(b"text/event-stream"), body(stream), body(b"")])
    expected = stream.replace(b'{"model": "/models/gemma-3-270m-mlx"}', b'{"model": "gemma-mlx"}')
    assert client.body() == expected


async def test_a_stream_ending_without_a_newline_loses_nothing() -> None:
    stream = (chunk("Hi") + "data: [DONE]").encode()
    client = await relay(
        [start(b"text/event-stream"), body(stream[:20], more=True), body(stream[20:])]
    )
    assert client.body().endswith(b"\n\ndata: [DONE]")
    assert SseParser().feed(client.body())[0].data.count(ASKED) == 1


async def test_text_python_cannot_encode_as_utf8_still_gets_through() -> None:
    raw = b'{"model": "/models/gemma-3-270m-mlx", "choices": [{"text": "\\ud83d"}]}'
    client = await relay([start(b"application/json", len(raw)), body(raw)])
    restored = json.loads(client.body())
    assert restored["model"] == ASKED and restored["choices"][0]["text"] == "\ud83d"


async def test_a_stream_line_longer_than_an_event_is_passed_on_not_held() -> None:
    """A line the router could never rename is not kept whole: it goes on as it comes."""
    client = Client()
    send = restoring_model_name(client.send, served=SERVED, asked=ASKED)
    await send(start(b"text/event-stream"))
    piece = b"x" * (1024 * 1024)
    fed = 0
    for _ in range(MAX_EVENT_BYTES // len(piece) + 3):
        await send(body(piece, more=True))
        fed += len(piece)
        assert fed - len(client.body()) <= MAX_EVENT_BYTES  # held back: at most one event
    after = b"\n\n" + chunk("Hi").encode()
    await send(body(after, more=True))
    await send(body(b""))
    assert client.body() == piece * (fed // len(piece)) + after.replace(
        SERVED.encode(), ASKED.encode()
    )


async def test_any_name_is_restored_for_a_server_that_answers_a_dated_one() -> None:
    """Hosted APIs are sent ``gpt-4o`` and answer ``gpt-4o-2024-08-06``."""
    client = Client()
    send = restoring_model_name(client.send, served=None, asked="gpt")
    await send(start(b"text/event-stream"))
    dated = {"model": "gpt-4o-2024-08-06", "choices": []}
    await send(body(f"data: {json.dumps(dated)}\n\n".encode(), more=True))
    await send(body(b'data: {"choices": []}\n\ndata: [DONE]\n\n'))
    events = [line for line in client.body().split(b"\n") if line]
    assert json.loads(events[0][6:])["model"] == "gpt"
    assert events[1:] == [b'data: {"choices": []}', b"data: [DONE]"]  # no model: as sent
