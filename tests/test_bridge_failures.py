"""Converted requests that go wrong, seen by the official SDKs through a real router.

A request with a field of the wrong type is a 400 naming the field, in the shape
of the path's API; a converted stream that meets trouble after its status line
(an error chunk, interleaved tool calls, a backend that ignored ``stream: true``)
still ends as its protocol says, never as an incomplete chunked read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.responses import ResponseCompletedEvent, ResponseFailedEvent

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

LOOKUP = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend().start(["--no-responses", "--chunks", "4"]) as backend:
        yield backend


@pytest.fixture(autouse=True)
def _reset(fake: FakeBackend) -> None:
    fake.control(reset=True)


@pytest.fixture(scope="module")
def router(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config: dict[str, Any] = {"models": {"chat": entry("m-chat", fake.port, default_timeout=10)}}
    process = RouterProcess(config, Path(tmp_path_factory.mktemp("bridge-failures"))).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def oai(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="-", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(router: RouterProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=router.url, api_key="-", max_retries=0) as client:
        yield client


def post(router: RouterProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{router.url}{path}", json=body, timeout=10)


# ------------------------------------------------------------------ wrong types: 400s


def test_a_wrongly_typed_responses_field_is_a_400_naming_it(router: RouterProcess) -> None:
    response = post(router, "/v1/responses", {"model": "m-chat", "input": "hi", "include": 5})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request",
        "include",
    )


def test_a_wrongly_typed_input_is_invalid_not_unsupported(router: RouterProcess) -> None:
    response = post(router, "/v1/responses", {"model": "m-chat", "input": 5})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "input")
    hosted = {"model": "m-chat", "input": "hi", "tools": [{"type": "web_search"}]}
    error = post(router, "/v1/responses", hosted).json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_field", "tools[0].type")


def test_a_null_tool_result_text_is_a_400_in_anthropic_shape(
    claude: anthropic.Anthropic,
) -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": None}],
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="m-chat",
            max_tokens=8,
            messages=[{"role": "user", "content": [result]}],  # type: ignore[list-item,misc]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].content[0].text" in body["error"]["message"]


def test_a_wrongly_typed_count_tokens_field_is_a_400_in_anthropic_shape(
    router: RouterProcess,
) -> None:
    body = {"model": "m-chat", "messages": [{"role": "user", "content": "x"}], "top_k": "3"}
    response = post(router, "/v1/messages/count_tokens", body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error" and "top_k" in payload["error"]["message"]


# ------------------------------------------------------------------ streams that go wrong


def test_a_string_error_chunk_fails_the_response_stream(
    oai: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.control(stream_error="model crashed")
    events = list(oai.responses.create(model="m-chat", input="hi", stream=True))
    final = events[-1]
    assert isinstance(final, ResponseFailedEvent)
    assert final.response.error is not None and final.response.error.message == "model crashed"


def test_a_string_error_chunk_is_an_anthropic_error_event(
    claude: anthropic.Anthropic, fake: FakeBackend
) -> None:
    fake.control(stream_error="model crashed")
    kinds: list[str] = []
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    with (
        pytest.raises(anthropic.APIStatusError) as caught,  # the SDK raises on `event: error`
        claude.messages.stream(model="m-chat", max_tokens=64, **request) as stream,
    ):
        kinds.extend(event.type for event in stream)
    assert "model crashed" in str(caught.value)
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    assert "content_block_delta" in kinds and "message_stop" not in kinds


def test_interleaved_tool_calls_arrive_whole_through_anthropic(
    claude: anthropic.Anthropic, fake: FakeBackend
) -> None:
    fake.control(interleave_tools=True)
    with claude.messages.stream(
        model="m-chat",
        max_tokens=64,
        tools=[LOOKUP],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "find owls"}],
    ) as stream:
        final = stream.get_final_message()
    uses = [block for block in final.content if block.type == "tool_use"]
    assert [use.input for use in uses] == [{"text": "find owls"}, {"text": "again"}]
    assert len({use.id for use in uses}) == 2
    assert final.stop_reason == "tool_use"


def test_interleaved_tool_calls_arrive_whole_through_responses(
    oai: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.control(interleave_tools=True)
    tool = {"type": "function", "name": "lookup", "parameters": LOOKUP["input_schema"]}
    with oai.responses.stream(model="m-chat", input="find owls", tools=[tool]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(call.arguments) for call in calls] == [
        {"text": "find owls"},
        {"text": "again"},
    ]
    assert [call.name for call in calls] == ["lookup", "lookup"]
    assert len({call.call_id for call in calls}) == 2
    assert final.status == "completed"


def test_a_backend_ignoring_stream_still_streams_the_whole_answer(
    oai: openai.OpenAI, claude: anthropic.Anthropic, fake: FakeBackend
) -> None:
    fake.control(ignore_stream=True)
    events = list(oai.responses.create(model="m-chat", input="hello", stream=True))
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    assert final.response.output_text == "echo: hello"
    with claude.messages.stream(
        model="m-chat", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello"
    assert message.usage.input_tokens > 0


def test_a_backend_ignoring_stream_with_a_tool_call_streams_it(
    claude: anthropic.Anthropic, fake: FakeBackend
) -> None:
    fake.control(ignore_stream=True)
    with claude.messages.stream(
        model="m-chat",
        max_tokens=64,
        tools=[LOOKUP],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "find cats"}],
    ) as stream:
        message = stream.get_final_message()
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.input == {"text": "find cats"} and message.stop_reason == "tool_use"


# -------------------------------------------------------------- answers that are no completions

NOT_A_COMPLETION = {"choices": "none today"}
UNREADABLE = {
    "choices": [
        {"message": {"role": "assistant", "tool_calls": {"0": 1}}, "finish_reason": "stop"}
    ],
    "usage": "plenty",
}


def test_an_answer_that_is_not_a_chat_completion_is_a_502(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(chat_body=NOT_A_COMPLETION)
    body = {"model": "m-chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = post(router, "/v1/messages", body)
    assert response.status_code == 502, response.text
    payload = response.json()
    assert payload["type"] == "error" and "not a chat completion" in payload["error"]["message"]


def test_a_chat_completion_the_router_cannot_read_is_a_502(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(chat_body=UNREADABLE)
    response = post(router, "/v1/responses", {"model": "m-chat", "input": "hi"})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "backend_error"


def test_a_streamed_request_answered_with_other_json_fails_the_stream(
    oai: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.control(chat_body={"hello": "world"})
    final = list(oai.responses.create(model="m-chat", input="hi", stream=True))[-1]
    assert isinstance(final, ResponseFailedEvent)
    assert final.response.error is not None
    assert "not a chat completion" in final.response.error.message


def test_a_plain_text_backend_error_is_relayed_in_the_openai_envelope(
    oai: openai.OpenAI, fake: FakeBackend
) -> None:
    fake.control(fail_status=500, fail_text="Internal Server Error")
    with pytest.raises(openai.InternalServerError) as caught:
        oai.responses.create(model="m-chat", input="hi")
    response = caught.value.response
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "Internal Server Error" in error["message"]


def test_a_backend_error_envelope_is_relayed_unchanged(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(fail_status=400)
    response = post(router, "/v1/responses", {"model": "m-chat", "input": "hi"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "fake_error"


def test_an_event_stream_answer_to_a_plain_request_is_a_502_saying_so(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(force_stream=True)
    response = post(router, "/v1/responses", {"model": "m-chat", "input": "hi"})
    assert response.status_code == 502, response.text
    assert "event stream" in response.json()["error"]["message"]
