"""What the router stores of /v1/responses answers: never at the cost of the answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_server.router.asgi import Message, Send
from slm_server.router.responses_memory import (
    NativeRecorder,
    RememberingStream,
    native_recorder,
    store_turn,
)
from slm_server.stores.memory import MemoryStore
from slm_server.translate.response_store import ResponseStore
from slm_server.translate.responses_stream import ResponsesStream
from slm_server.translate.sse import sse_frame

REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True}
CHUNK = {"choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}]}


class BrokenStore(ResponseStore):
    def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None = None
    ) -> bool:
        raise RuntimeError("the store broke")


def remembering(store: ResponseStore) -> RememberingStream:
    return RememberingStream(
        ResponsesStream(REQUEST, "resp_1", 1),
        lambda done: store_turn(store, REQUEST, None, done, None),
    )


def test_a_stream_stores_its_final_response() -> None:
    store = ResponseStore()
    stream = remembering(store)
    events = stream.start() + stream.feed(CHUNK) + stream.finish()
    assert events[-1][0] == "response.completed"
    assert store.get("resp_1") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_a_store_that_fails_still_lets_the_stream_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = remembering(BrokenStore())
    events = stream.start() + stream.feed(CHUNK) + stream.finish()
    assert events[-1][0] == "response.completed"
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == "hello"
    assert "resp_1 not stored" in caplog.text


def native_answer(response_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "message", "id": "msg_1", "role": "assistant"}
    message["content"] = [{"type": "output_text", "text": "hello", "annotations": []}]
    return {"id": response_id, "object": "response", "output": [message]}


class SeenStore(MemoryStore):
    """Notes in ``seen`` when a turn is stored, among what the client is sent."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__(ResponseStore())
        self.seen = seen

    async def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None
    ) -> bool:
        self.seen.append(f"stored {response_id}")
        return await super().put(response_id, messages, owner)


async def relay(recorder: NativeRecorder | None, status: int, bodies: list[bytes]) -> None:
    """Send an answer of ``status`` through ``recorder``, as the proxy does."""
    assert recorder is not None
    await recorder.send({"type": "http.response.start", "status": status, "headers": []})
    for n, body in enumerate(bodies, 1):
        more = n < len(bodies)
        await recorder.send({"type": "http.response.body", "body": body, "more_body": more})


def client_noting(seen: list[str]) -> Send:
    """A client that notes each body it is sent: its event's name, "json" or "end"."""

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message["body"]
            name = body.split(b"\n")[0].removeprefix(b"event: ").decode() if body else "end"
            seen.append(f"sent {'json' if body.startswith(b'{') else name}")

    return send


async def test_a_native_answer_is_stored_before_its_body_goes_out() -> None:
    seen: list[str] = []
    store = SeenStore(seen)
    recorder = native_recorder({"model": "m", "input": "hi"}, store, None, client_noting(seen))
    await relay(recorder, 200, [json.dumps(native_answer("resp_n")).encode()])
    assert seen == ["stored resp_n", "sent json"]
    assert await store.get("resp_n", None) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


async def test_a_native_stream_holds_its_completed_event_until_the_turn_is_stored() -> None:
    seen: list[str] = []
    store = SeenStore(seen)
    asked = {"model": "m", "input": "hi", "stream": True}
    recorder = native_recorder(asked, store, None, client_noting(seen))
    completed = {"type": "response.completed", "response": native_answer("resp_s")}
    await relay(
        recorder,
        200,
        [
            sse_frame("response.created", {"type": "response.created"}),
            sse_frame("response.completed", completed),
            b"",
        ],
    )
    assert seen == [
        "sent response.created",
        "stored resp_s",
        "sent response.completed",
        "sent end",
    ]
    assert await store.get("resp_s", None) is not None


async def test_a_native_answer_is_stored_for_its_key_alone() -> None:
    store = MemoryStore(ResponseStore())
    asked = {"model": "m", "input": "hi"}
    recorder = native_recorder(asked, store, "alice", client_noting([]))
    await relay(recorder, 200, [json.dumps(native_answer("resp_n")).encode()])
    assert await store.get("resp_n", "alice") is not None
    assert await store.get("resp_n", "bob") is None and await store.get("resp_n", None) is None


async def test_a_native_error_is_relayed_and_not_stored() -> None:
    seen: list[str] = []
    store = SeenStore(seen)
    recorder = native_recorder({"model": "m", "input": "hi"}, store, None, client_noting(seen))
    await relay(recorder, 400, [json.dumps(native_answer("resp_e")).encode()])
    assert seen == ["sent json"]


def test_a_native_answer_asked_not_to_be_stored_is_not_even_watched() -> None:
    asked = {"model": "m", "input": "hi", "store": False}
    assert native_recorder(asked, MemoryStore(ResponseStore()), None, client_noting([])) is None
