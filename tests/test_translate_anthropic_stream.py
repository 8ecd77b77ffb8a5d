"""Chat Completions stream -> Anthropic Messages stream events.

Fixtures under ``fixtures/anthropic/``: ``text_length.sse``, ``text_stop.sse`` and
``reasoning.sse`` were recorded from a real llama-server serving Gemma 3 270M
(the reasoning one with a ``<think>`` chat template, ``--reasoning-format
deepseek --reasoning-budget 4``); ``tool_calls.sse`` is hand-made in
llama-server's chunk shape, as that model emits no tool calls.

Every emitted event is validated with the anthropic SDK's ``RawMessageStreamEvent``
and the message they assemble into with its ``Message`` model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStartEvent, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from slm_server.translate.anthropic_response import THINKING_SIGNATURE, chat_to_message
from slm_server.translate.anthropic_stream import MessagesStream
from slm_server.translate.sse import MAX_EVENT_BYTES, SseParser

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
STREAM_EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
Event = tuple[str, dict[str, Any]]


def recorded(name: str) -> list[dict[str, Any]]:
    """The chunks of a recorded stream, up to its ``[DONE]``."""
    chunks: list[dict[str, Any]] = []
    for event in SseParser().feed((FIXTURES / name).read_bytes()):
        if event.data == "[DONE]":
            return chunks
        chunks.append(json.loads(event.data))
    raise AssertionError(f"{name} has no [DONE]")


def run(chunks: list[dict[str, Any]]) -> list[Event]:
    stream = MessagesStream("gemma", "msg_1")
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    return events + stream.finish()


def validated(events: list[Event]) -> Message:
    """Check each event and the stream's grammar; return the message they assemble into.

    Assembles the way the SDK's accumulator does, but parses each tool's
    arguments as a whole at its block's end, so a broken JSON text fails here.
    """
    for name, data in events:
        assert name == data["type"]
        STREAM_EVENT.validate_python(data)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "message_start" not in names[1:] and "message_delta" not in names[:-2]

    message: dict[str, Any] = copy.deepcopy(events[0][1]["message"])
    open_index: int | None = None
    arguments: dict[int, str] = {}
    for name, data in events[1:-2]:
        index = data["index"]
        if name == "content_block_start":
            assert open_index is None and index == len(message["content"])
            open_index = index
            message["content"].append(copy.deepcopy(data["content_block"]))
            continue
        assert index == open_index, f"{name} for block {index} while {open_index} is open"
        block = message["content"][index]
        if name == "content_block_stop":
            if block["type"] == "tool_use" and arguments.get(index):
                block["input"] = json.loads(arguments[index])
            open_index = None
            continue
        delta = data["delta"]
        kind = delta["type"]
        if kind == "text_delta":
            block["text"] += delta["text"]
        elif kind == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = delta["signature"]
        else:
            assert kind == "input_json_delta" and block["type"] == "tool_use"
            arguments[index] = arguments.get(index, "") + delta["partial_json"]
    assert open_index is None

    final = events[-2][1]
    message.update(final["delta"])
    message["usage"].update({k: v for k, v in final["usage"].items() if v is not None})
    return Message.model_validate(message)


def completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` the same chunks add up to."""
    message: dict[str, Any] = {"role": "assistant", "content": "", "reasoning_content": ""}
    calls: dict[int, dict[str, Any]] = {}
    finish, usage = None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            message["content"] += delta.get("content") or ""
            message["reasoning_content"] += delta.get("reasoning_content") or ""
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(piece["index"], {"function": {"arguments": ""}})
                call["id"] = piece.get("id") or call.get("id")
                function = piece.get("function") or {}
                call["function"]["name"] = function.get("name") or call["function"].get("name")
                call["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}


def block_events(events: list[Event]) -> list[tuple[str, int, str]]:
    """(event, index, block or delta type) for the events between start and message_delta."""
    out = []
    for name, data in events[1:-2]:
        kind = (data.get("content_block") or data.get("delta") or {"type": ""})["type"]
        out.append((name, data["index"], kind))
    return out


FIXTURE_NAMES = ["text_length.sse", "text_stop.sse", "reasoning.sse", "tool_calls.sse"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_stream_matches_the_non_streaming_conversion(name: str) -> None:
    chunks = recorded(name)
    streamed = validated(run(chunks)).to_dict()
    whole = chat_to_message(completion(chunks), "gemma", "msg_1")
    assert streamed == whole


def test_recorded_text_cut_short() -> None:
    events = run(recorded("text_length.sse"))
    message = validated(events)
    assert block_events(events) == [
        ("content_block_start", 0, "text"),
        *[("content_block_delta", 0, "text_delta")] * 6,
        ("content_block_stop", 0, ""),
    ]
    assert message.content[0].type == "text" and message.content[0].text == "<|im_end|>"
    assert message.stop_reason == "max_tokens"
    assert events[-2][1]["usage"] == {
        "input_tokens": 26,
        "output_tokens": 6,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_recorded_stop_sequence() -> None:
    message = validated(run(recorded("text_stop.sse")))
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    # 21 of the 26 prompt tokens came from llama-server's cache.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (5, 21)
    assert message.usage.output_tokens == 12


def test_recorded_reasoning_then_text() -> None:
    events = run(recorded("reasoning.sse"))
    message = validated(events)
    assert block_events(events) == [
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, ""),
        ("content_block_start", 1, "text"),
        *[("content_block_delta", 1, "text_delta")] * 3,
        ("content_block_stop", 1, ""),
    ]
    assert [block.to_dict() for block in message.content] == [
        {"type": "thinking", "thinking": "<|im", "signature": THINKING_SIGNATURE},
        {"type": "text", "text": "<|im"},
    ]


def test_tool_arguments_are_emitted_piece_by_piece() -> None:
    stream = MessagesStream("gemma", "msg_1")
    stream.start()
    per_chunk = [stream.feed(chunk) for chunk in recorded("tool_calls.sse")]
    finish = stream.finish()
    pieces = [
        [(data.get("content_block") or data.get("delta") or data)["type"] for _, data in events]
        for events in per_chunk
    ]
    assert pieces == [
        [],  # the role-only first chunk
        ["text", "text_delta"],
        ["text_delta"],
        ["content_block_stop", "tool_use"],
        ["input_json_delta"],
        ["input_json_delta"],
        ["input_json_delta"],
        [],  # a second call while the first is open waits for it to end (they may interleave)
        [],  # finish_reason
        [],  # usage
    ]
    closing = [
        (data.get("content_block") or data.get("delta") or data)["type"] for _, data in finish[:4]
    ]
    assert closing == ["content_block_stop", "tool_use", "input_json_delta", "content_block_stop"]
    partial = [
        data["delta"]["partial_json"]
        for events in [*per_chunk, finish]
        for _, data in events
        if data.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert partial == ['{"city"', ': "Par', 'is"}', '{"tz": "CET"}']
    assert finish[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    message = validated(run(recorded("tool_calls.sse")))
    assert [block.to_dict() for block in message.content] == [
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "fc_7Qx2mVb1kS9dT4nH0aLzEwRy3uPiJcGo",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
        {
            "type": "tool_use",
            "id": "fc_Hn3pLw8eZr5YbQ1tXk6sVd0mCj2gUfAo",
            "name": "get_time",
            "input": {"tz": "CET"},
        },
    ]
    assert message.usage.input_tokens == 12 and message.usage.cache_read_input_tokens == 200


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


SWITCHES: list[tuple[str, list[dict[str, Any]], list[tuple[str, str]], str]] = [
    (
        "thinking, text, thinking again",
        [
            delta(reasoning_content="a"),
            delta(content="b"),
            delta(reasoning="c"),
            delta("stop"),
        ],
        [("thinking", "a"), ("text", "b"), ("thinking", "c")],
        "end_turn",
    ),
    (
        "reasoning and content in one delta",
        [delta(reasoning_content="a", content="b"), delta("stop")],
        [("thinking", "a"), ("text", "b")],
        "end_turn",
    ),
    (
        "text after a tool call, call without id or index",
        [
            delta(tool_calls=[{"function": {"name": "ping", "arguments": "{}"}}]),
            delta(content="done"),
            delta("tool_calls"),
        ],
        [("tool_use", "toolu_1_0:{}"), ("text", "done")],
        "tool_use",
    ),
    (
        "nothing at all",
        [delta(role="assistant", content=None), delta("stop")],
        [],
        "end_turn",
    ),
    ("no finish reason", [delta(content="x")], [("text", "x")], "end_turn"),
]


@pytest.mark.parametrize(
    ("chunks", "blocks", "stop"), [c[1:] for c in SWITCHES], ids=[c[0] for c in SWITCHES]
)
def test_block_switching(
    chunks: list[dict[str, Any]], blocks: list[tuple[str, str]], stop: str
) -> None:
    message = validated(run(chunks))
    seen = []
    for block in message.content:
        if block.type == "thinking":
            seen.append(("thinking", block.thinking))
        elif block.type == "text":
            seen.append(("text", block.text))
        else:
            assert block.type == "tool_use"
            seen.append(("tool_use", f"{block.id}:{json.dumps(block.input)}"))
    assert seen == blocks
    assert message.stop_reason == stop
    assert message.usage.output_tokens == 0  # no usage chunk: zeros, still valid


def test_other_choices_are_ignored() -> None:
    chunk = {"choices": [{"index": 1, "delta": {"content": "no"}, "finish_reason": None}]}
    stream = MessagesStream("gemma", "msg_1")
    assert stream.feed(chunk) == []


def test_start_announces_an_empty_message() -> None:
    [(name, data)] = MessagesStream("gemma", "msg_9").start()
    assert name == "message_start"
    event = STREAM_EVENT.validate_python(data)
    assert isinstance(event, RawMessageStartEvent)
    message = event.message
    assert (message.id, message.model, message.content, message.stop_reason) == (
        "msg_9",
        "gemma",
        [],
        None,
    )


def test_upstream_failure_becomes_an_error_event() -> None:
    stream = MessagesStream("gemma", "msg_1")
    stream.start()
    assert stream.feed(delta(content="par")) != []
    upstream = {"error": {"code": 500, "message": "context overflow", "type": "server_error"}}
    [(name, body)] = stream.feed(upstream)
    assert name == "error"
    assert body == {"type": "error", "error": {"type": "api_error", "message": "context overflow"}}
    ErrorResponse.model_validate(body)
    assert stream.feed(delta(content="more")) == [] and stream.finish() == []  # it has ended
    other = MessagesStream("gemma", "msg_2")
    [(name, body)] = other.error("backend went away", status=529)
    assert body["error"] == {"type": "overloaded_error", "message": "backend went away"}
    ErrorResponse.model_validate(body)


def test_a_string_error_chunk_ends_the_stream() -> None:
    stream = MessagesStream("gemma", "msg_1")
    stream.start()
    [(name, body)] = stream.feed({"error": "model crashed"})
    assert (name, body["error"]["message"]) == ("error", "model crashed")
    ErrorResponse.model_validate(body)


def tool_piece(index: int, arguments: str, **call: str) -> dict[str, Any]:
    function = {"arguments": arguments, **({"name": call["name"]} if "name" in call else {})}
    piece: dict[str, Any] = {"index": index, "function": function}
    if "id" in call:
        piece["id"] = call["id"]
    return delta(tool_calls=[piece])


def test_interleaved_tool_calls_become_whole_blocks_in_order() -> None:
    chunks = [
        delta(content="Checking."),
        tool_piece(0, '{"city":', id="a", name="weather"),
        tool_piece(1, '{"tz":', id="b", name="time"),
        tool_piece(0, ' "Paris"}'),
        tool_piece(2, "{}", id="c", name="now"),
        tool_piece(1, ' "CET"}'),
        delta(finish="tool_calls"),
    ]
    message = validated(run(chunks))
    assert [block.to_dict() for block in message.content] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "b", "name": "time", "input": {"tz": "CET"}},
        {"type": "tool_use", "id": "c", "name": "now", "input": {}},
    ]
    assert message.stop_reason == "tool_use"


def test_held_tool_calls_go_out_before_following_text() -> None:
    chunks = [
        tool_piece(0, "{}", id="a", name="f"),
        tool_piece(1, "{}", id="b", name="g"),
        delta(content="done"),
    ]
    message = validated(run(chunks))
    assert [block.type for block in message.content] == ["tool_use", "tool_use", "text"]


def test_held_tool_call_arguments_are_bounded() -> None:
    stream = MessagesStream("gemma", "msg_1")
    stream.start()
    stream.feed(tool_piece(0, "{}", id="a", name="f"))
    stream.feed(tool_piece(1, "", id="b", name="g"))
    megabyte = "x" * (1024 * 1024)
    events: list[Event] = []
    for _ in range(MAX_EVENT_BYTES // len(megabyte) + 1):
        events += stream.feed(tool_piece(1, megabyte))
    [(name, body)] = events  # nothing of call 1 went out: it ends the stream instead
    assert name == "error" and "tool calls exceed" in body["error"]["message"]
    ErrorResponse.model_validate(body)
    assert stream.finish() == []


def test_a_tool_call_resumed_after_text_ends_the_stream_with_an_error() -> None:
    stream = MessagesStream("gemma", "msg_1")
    stream.start()
    stream.feed(tool_piece(0, "{", id="a", name="f"))
    stream.feed(delta(content="then text"))
    [(name, body)] = stream.feed(tool_piece(0, "}"))
    assert name == "error" and "tool call 0" in body["error"]["message"]
    ErrorResponse.model_validate(body)
    assert stream.finish() == []
