"""A whole chat completion as stream chunks, and the error a chunk may carry."""

from __future__ import annotations

from typing import Any

import pytest

from slm_server.translate.anthropic_response import chat_to_message
from slm_server.translate.anthropic_stream import MessagesStream
from slm_server.translate.chat_chunks import chunk_error, completion_as_chunks
from slm_server.translate.responses_response import chat_to_response
from slm_server.translate.responses_stream import ResponsesStream

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
COMPLETIONS = {
    "text": {"role": "assistant", "content": "hello"},
    "reasoning and text": {"role": "assistant", "content": "hi", "reasoning_content": "hmm"},
    "tool calls": {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL, {**CALL, "id": "c2"}],
    },
}


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"object": "chat.completion", "choices": [choice], "usage": usage}


@pytest.mark.parametrize("message", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_streamed_whole_answer_matches_the_unstreamed_conversion(message: dict[str, Any]) -> None:
    whole = completion(message)
    chunks = completion_as_chunks(whole)
    assert chunks is not None

    responses = ResponsesStream({"model": "m"}, "resp_1", 1)
    responses.start()
    for chunk in chunks:
        responses.feed(chunk)
    responses.finish()
    assert responses.response == chat_to_response(whole, {"model": "m"}, "resp_1", 1)

    messages = MessagesStream("m", "msg_1")
    events = messages.start()
    for chunk in chunks:
        events += messages.feed(chunk)
    events += messages.finish()
    expected = chat_to_message(whole, "m", "msg_1")
    blocks = [data["content_block"]["type"] for name, data in events if "content_block" in data]
    assert blocks == [block["type"] for block in expected["content"]]
    assert events[-2][1]["usage"] == expected["usage"]


@pytest.mark.parametrize(
    "answer",
    [{}, {"choices": []}, {"choices": {"0": {}}}, {"choices": ["x"]}, {"choices": [{}]}],
)
def test_what_is_not_a_chat_completion_has_no_chunks(answer: dict[str, Any]) -> None:
    assert completion_as_chunks(answer) is None


def test_chunk_errors_of_every_shape() -> None:
    assert chunk_error({"choices": [{"delta": {}}]}) is None
    assert chunk_error({"error": {"message": "boom", "code": 500}}) == "boom"
    assert chunk_error({"error": "boom"}) == "boom"
    assert chunk_error({"error": {"code": 500}}) == "{'code': 500}"
    assert chunk_error({"error": 7}) == "7"
