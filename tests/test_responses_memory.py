"""What the router stores of /v1/responses answers: never at the cost of the answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_server.router.responses_memory import RememberingStream, native_recorder, store_turn
from slm_server.translate.response_store import ResponseStore
from slm_server.translate.responses_stream import ResponsesStream

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


def native_answer(response_id: str) -> bytes:
    message: dict[str, Any] = {"type": "message", "id": "msg_1", "role": "assistant"}
    message["content"] = [{"type": "output_text", "text": "hello", "annotations": []}]
    return json.dumps({"id": response_id, "object": "response", "output": [message]}).encode()


def test_a_native_answer_is_recorded() -> None:
    store = ResponseStore()
    recorder = native_recorder({"model": "m", "input": "hi"}, store, None)
    assert recorder is not None
    recorder.feed(native_answer("resp_n"))
    recorder.remember()
    assert "resp_n" in store


def test_a_native_answer_is_recorded_for_its_key_alone() -> None:
    store = ResponseStore()
    recorder = native_recorder({"model": "m", "input": "hi"}, store, "alice")
    assert recorder is not None
    recorder.feed(native_answer("resp_n"))
    recorder.remember()
    assert store.get("resp_n", "alice") is not None
    assert store.get("resp_n", "bob") is None and store.get("resp_n") is None


def test_a_native_answer_asked_not_to_be_stored_is_not_even_watched() -> None:
    asked = {"model": "m", "input": "hi", "store": False}
    assert native_recorder(asked, ResponseStore(), None) is None
