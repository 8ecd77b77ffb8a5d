"""The official openai and anthropic SDKs against a backend that has only Chat Completions.

The fake backend answers 404 on /v1/responses (``--no-responses``) and has no
/v1/messages at all, so every request here goes through the router's
conversion. The SDKs parse every event into their typed models: a shape they
do not accept fails these tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
}
ANTHROPIC_LOOKUP = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend().start(["--no-responses", "--chunks", "3"]) as backend:
        yield backend


@pytest.fixture(scope="module")
def router(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config: dict[str, Any] = {"models": {"chat": entry("m-chat", fake.port, default_timeout=10)}}
    process = RouterProcess(config, Path(tmp_path_factory.mktemp("bridges"))).start()
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


# ------------------------------------------------------------------ Responses API


def test_response_plain(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="m-chat", input="hello", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text == "echo: hello"
    assert response.usage is not None and response.usage.input_tokens > 0


def test_missing_endpoint_is_learned(oai: openai.OpenAI, fake: FakeBackend) -> None:
    oai.responses.create(model="m-chat", input="first")
    before = fake.stats()["requests"]
    oai.responses.create(model="m-chat", input="second")
    assert fake.stats()["requests"] == before + 1  # straight to chat, no 404 first


def stream_events(client: openai.OpenAI, **request: Any) -> list[ResponseStreamEvent]:
    return list(client.responses.create(stream=True, **request))


def test_response_streamed(oai: openai.OpenAI) -> None:
    events = stream_events(oai, model="m-chat", input="hello")
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert "".join(deltas) == "tok0 tok1 tok2 "
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    assert final.response.output_text == "tok0 tok1 tok2 "


def test_function_tool_round_trip(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="m-chat", input="find cats", tools=[LOOKUP])  # type: ignore[list-item]
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "lookup"
    assert json.loads(call.arguments) == {"text": "find cats"}
    second = oai.responses.create(
        model="m-chat",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
        tools=[LOOKUP],  # type: ignore[list-item]
    )
    assert second.output_text == "tool said: 42"


def test_function_tool_streamed(oai: openai.OpenAI) -> None:
    events = stream_events(oai, model="m-chat", input="find dogs", tools=[LOOKUP])
    deltas = [e.delta for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
    assert len(deltas) >= 3  # passed on in pieces, as the backend sent them
    [done] = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
    assert json.loads(done.arguments) == {"text": "find dogs"} == json.loads("".join(deltas))
    assert events[-1].type == "response.completed"


def test_unknown_previous_response_is_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="unknown or expired"):
        oai.responses.create(model="m-chat", input="x", previous_response_id="resp_nope")


def test_unsupported_tool_is_400_naming_it(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model="m-chat", input="x", tools=[{"type": "web_search"}])
    assert caught.value.body is not None and "tools" in str(caught.value.body)


# ------------------------------------------------------------------ Anthropic Messages


def test_message_plain(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="m-chat",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello"}],
    )
    assert message.role == "assistant" and message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello"
    assert message.usage.input_tokens > 0


def test_message_streamed(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m-chat", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text == "tok0 tok1 tok2 "


def test_message_tool_round_trip(claude: anthropic.Anthropic) -> None:
    question: anthropic.types.MessageParam = {"role": "user", "content": "find owls"}
    first = claude.messages.create(
        model="m-chat",
        max_tokens=64,
        tools=[ANTHROPIC_LOOKUP],  # type: ignore[list-item]
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "lookup" and use.input == {"text": "find owls"}
    second = claude.messages.create(
        model="m-chat",
        max_tokens=64,
        tools=[ANTHROPIC_LOOKUP],  # type: ignore[list-item]
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42"}],
            },
        ],
    )
    assert second.content[0].type == "text" and second.content[0].text == "tool said: 42"


def test_message_tool_streamed(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="m-chat",
        max_tokens=64,
        tools=[ANTHROPIC_LOOKUP],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "find bats"}],
    ) as stream:
        pieces = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        final = stream.get_final_message()
    assert len([p for p in pieces if p]) >= 3
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert use.input == {"text": "find bats"}
    assert final.stop_reason == "tool_use"


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(
        model="m-chat", messages=[{"role": "user", "content": "one two three"}]
    )
    assert counted.input_tokens > 0


def test_errors_come_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]


def test_converted_answers_say_so(oai: openai.OpenAI) -> None:
    raw = oai.responses.with_raw_response.create(model="m-chat", input="hello")
    assert raw.headers["x-slm-converted-from"].startswith("chat-completions; reason=")
