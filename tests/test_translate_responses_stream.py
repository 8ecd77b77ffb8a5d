"""Chat completion chunks -> Responses stream events, checked against the openai SDK's types.

The fixtures under fixtures/chat_streams are chunk sequences: two recorded from
a real llama-server, two hand-made in its shape (tool calls in pieces,
reasoning_content), since the small test model produces neither.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from slm_server.translate.responses_response import chat_to_response
from slm_server.translate.responses_stream import Event, ResponsesStream

FIXTURES = Path(__file__).parent / "fixtures" / "chat_streams"
EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True}
TOOLS_REQUEST: dict[str, Any] = {
    **REQUEST,
    "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
    ],
}

TEXT_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_ITEM_DONE = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def chunks_of(name: str) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())["chunks"]
    return chunks


def run(
    chunks: list[dict[str, Any]], request: dict[str, Any] = REQUEST
) -> tuple[list[Event], ResponsesStream]:
    stream = ResponsesStream(request, "resp_s", 1795600000)
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    events += stream.finish()
    return events, stream


def check_with_sdk(events: list[Event], request: dict[str, Any] = REQUEST) -> list[Any]:
    """Validates every event, and lets the SDK's own stream accumulator consume them."""
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=request.get("tools", []), text_format=omit
    )
    parsed = []
    for number, (kind, data) in enumerate(events):
        assert data["type"] == kind
        assert data["sequence_number"] == number
        event = EVENT.validate_python(data)
        parsed += state.handle_event(event)  # asserts on items it cannot find
    return parsed


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed chat.completion these chunks add up to."""
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            message["content"] += delta.get("content") or ""
            if delta.get("reasoning_content"):
                message["reasoning_content"] = message.get("reasoning_content", "")
                message["reasoning_content"] += delta["reasoning_content"]
            for piece in delta.get("tool_calls") or []:
                into = calls.setdefault(
                    piece["index"], {"type": "function", "function": {"name": "", "arguments": ""}}
                )
                if piece.get("id"):
                    into["id"] = piece["id"]
                function = piece.get("function") or {}
                into["function"]["name"] += function.get("name") or ""
                into["function"]["arguments"] += function.get("arguments") or ""
            finish_reason = choice["finish_reason"] or finish_reason
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


FIXTURE_CASES: list[tuple[str, dict[str, Any], list[str], str, str]] = [
    # (fixture, request, event types after created/in_progress, final status, output text)
    (
        "llamacpp_text_stop",
        REQUEST,
        [*TEXT_ITEM, *["response.output_text.delta"] * 5, *TEXT_ITEM_DONE, "response.completed"],
        "completed",
        "Say hi. mendatanguser",
    ),
    (
        "llamacpp_text_length",
        REQUEST,
        [*TEXT_ITEM, *["response.output_text.delta"] * 6, *TEXT_ITEM_DONE, "response.incomplete"],
        "incomplete",
        "Write a long story about a",
    ),
    (
        "tool_calls_in_pieces",
        TOOLS_REQUEST,
        [
            *TEXT_ITEM,
            "response.output_text.delta",
            "response.output_text.delta",
            *TEXT_ITEM_DONE,
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            # Calls stay open until the end: a backend may yet send more of the first.
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ],
        "completed",
        "Checking both.",
    ),
    (
        "reasoning_content",
        REQUEST,
        [
            "response.output_item.added",
            "response.content_part.added",
            *["response.reasoning_text.delta"] * 3,
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            *TEXT_ITEM,
            "response.output_text.delta",
            "response.output_text.delta",
            *TEXT_ITEM_DONE,
            "response.completed",
        ],
        "completed",
        "2 + 2 = 4.",
    ),
]


@pytest.mark.parametrize(
    ("fixture", "request_body", "expected", "status", "text"),
    FIXTURE_CASES,
    ids=[case[0] for case in FIXTURE_CASES],
)
def test_recorded_streams(
    fixture: str, request_body: dict[str, Any], expected: list[str], status: str, text: str
) -> None:
    chunks = chunks_of(fixture)
    events, stream = run(chunks, request_body)
    assert [kind for kind, _ in events] == [
        "response.created",
        "response.in_progress",
        *expected,
    ]
    check_with_sdk(events, request_body)

    final = events[-1][1]["response"]
    assert final is stream.response
    parsed = Response.model_validate(final)
    assert parsed.status == status
    assert parsed.output_text == text
    usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    # Streamed or not, the same turn gives the same response.
    assert final == chat_to_response(aggregate(chunks), request_body, "resp_s", 1795600000)


def test_created_and_in_progress_carry_an_empty_response() -> None:
    events = ResponsesStream(REQUEST, "resp_s", 7).start()
    check_with_sdk(events)
    for _, data in events:
        assert data["response"]["status"] == "in_progress"
        assert data["response"]["output"] == []
        assert data["response"]["created_at"] == 7


def test_each_delta_goes_out_with_its_chunk() -> None:
    stream = ResponsesStream(TOOLS_REQUEST, "resp_s", 1)
    stream.start()
    for chunk in chunks_of("tool_calls_in_pieces") + chunks_of("reasoning_content")[1:7]:
        delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
        piece = (
            delta.get("content")
            or delta.get("reasoning_content")
            or ((delta.get("tool_calls") or [{}])[0].get("function") or {}).get("arguments")
        )
        out = [data.get("delta") for _, data in stream.feed(chunk) if "delta" in data]
        assert out == ([piece] if piece else [])


def test_tool_call_items() -> None:
    events, stream = run(chunks_of("tool_calls_in_pieces"), TOOLS_REQUEST)
    added = [data["item"] for kind, data in events if kind == "response.output_item.added"]
    assert added[1] == {
        "id": "fc_s_1",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_w1",
        "name": "get_weather",
        "arguments": "",
    }
    done = [data for kind, data in events if kind == "response.function_call_arguments.done"]
    assert [(d["item_id"], d["output_index"], d["name"], d["arguments"]) for d in done] == [
        ("fc_s_1", 1, "get_weather", '{"city": "Paris"}'),
        ("fc_s_2", 2, "get_time", '{"tz": "CET"}'),
    ]
    assert stream.response is not None
    assert [item["call_id"] for item in stream.response["output"][1:]] == ["call_w1", "call_t2"]


def chunk(
    delta: dict[str, Any], finish_reason: str | None = None, index: int = 0
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }


def piece(index: int, arguments: str, **first: Any) -> dict[str, Any]:
    function = {"arguments": arguments}
    if "name" in first:
        function["name"] = first.pop("name")
    return chunk({"tool_calls": [{"index": index, **first, "function": function}]})


ROLE = chunk({"role": "assistant", "content": None})

SYNTHETIC_CASES: list[tuple[str, list[dict[str, Any]], list[tuple[str, str]], str]] = [
    # (name, chunks, [(item type, item status)] in the final output, final event)
    (
        "no output at all",
        [ROLE, chunk({}, "stop")],
        [("message", "completed")],
        "response.completed",
    ),
    (
        "no finish reason",
        [ROLE, chunk({"content": "hi"})],
        [("message", "completed")],
        "response.completed",
    ),
    (
        "reasoning only, then the length limit",
        [ROLE, chunk({"reasoning_content": "hmm"}), chunk({}, "length")],
        [("reasoning", "completed"), ("message", "incomplete")],
        "response.incomplete",
    ),
    (
        "tool call cut off",
        [piece(0, '{"a"', id="call_1", name="f"), chunk({}, "length")],
        [("function_call", "incomplete")],
        "response.incomplete",
    ),
    (
        "text after a tool call opens a second message",
        [chunk({"content": "a"}), piece(0, "{}", id="c", name="f"), chunk({"content": "b"})],
        [("message", "completed"), ("function_call", "completed"), ("message", "completed")],
        "response.completed",
    ),
    (
        "other choices are ignored",
        [chunk({"content": "a"}), chunk({"content": "zzz"}, index=1), chunk({}, "stop")],
        [("message", "completed")],
        "response.completed",
    ),
]


@pytest.mark.parametrize(
    ("chunks", "items", "last"),
    [case[1:] for case in SYNTHETIC_CASES],
    ids=[case[0] for case in SYNTHETIC_CASES],
)
def test_synthetic_streams(
    chunks: list[dict[str, Any]], items: list[tuple[str, str]], last: str
) -> None:
    events, stream = run(chunks)
    check_with_sdk(events)
    assert events[-1][0] == last
    assert stream.response is not None
    Response.model_validate(stream.response)
    assert [(item["type"], item["status"]) for item in stream.response["output"]] == items
    assert stream.response["usage"] is None  # no usage chunk


def test_tool_call_without_id_or_name_in_its_first_piece() -> None:
    chunks = [piece(0, "{"), piece(0, "}", id="call_late", name="f")]
    events, stream = run(chunks)
    check_with_sdk(events)
    assert stream.response is not None
    item = stream.response["output"][0]
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_late", "f", "{}")


def test_tool_call_with_no_id_at_all_gets_one() -> None:
    events, stream = run([piece(0, "{}", name="f")])
    check_with_sdk(events)
    assert stream.response is not None
    assert stream.response["output"][0]["call_id"] == "call_s_0"


def test_interleaved_tool_calls_are_open_at_once() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.start() + stream.feed(chunk({"content": "Both."}))
    for part in (
        piece(0, '{"a":', id="c0", name="f"),
        piece(1, '{"b":', id="c1", name="g"),
        piece(0, "1}"),
        piece(1, "2}"),
    ):
        events += stream.feed(part)
    events += stream.finish()
    check_with_sdk(events)
    assert events[-1][0] == "response.completed"
    added = {
        data["item"]["call_id"]: (data["output_index"], data["item"]["id"])
        for kind, data in events
        if kind == "response.output_item.added" and data["item"]["type"] == "function_call"
    }
    assert added == {"c0": (1, "fc_s_1"), "c1": (2, "fc_s_2")}
    deltas = [
        (data["output_index"], data["item_id"], data["delta"])
        for kind, data in events
        if kind == "response.function_call_arguments.delta"
    ]
    assert deltas == [
        (1, "fc_s_1", '{"a":'),
        (2, "fc_s_2", '{"b":'),
        (1, "fc_s_1", "1}"),
        (2, "fc_s_2", "2}"),
    ]
    done = [
        (data["output_index"], data["arguments"])
        for kind, data in events
        if kind == "response.function_call_arguments.done"
    ]
    assert done == [(1, '{"a":1}'), (2, '{"b":2}')]
    assert stream.response is not None
    calls = [item for item in stream.response["output"] if item["type"] == "function_call"]
    assert [(c["call_id"], c["name"], c["arguments"], c["status"]) for c in calls] == [
        ("c0", "f", '{"a":1}', "completed"),
        ("c1", "g", '{"b":2}', "completed"),
    ]


def test_open_tool_calls_are_kept_incomplete_when_the_stream_fails() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.start() + stream.feed(piece(0, '{"a":', id="c0", name="f"))
    events += stream.feed(piece(1, "{}", id="c1", name="g"))
    events += stream.error("backend died")
    check_with_sdk(events)
    assert stream.response is not None
    output = stream.response["output"]
    assert [(item["call_id"], item["status"]) for item in output] == [
        ("c0", "incomplete"),
        ("c1", "incomplete"),
    ]


def test_more_of_a_tool_call_after_text_fails_the_response() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.start()
    events += stream.feed(piece(0, '{"a":', id="c0", name="f"))
    events += stream.feed(chunk({"content": "then text"}))
    events += stream.feed(piece(0, "1}"))
    check_with_sdk(events)
    assert events[-1][0] == "response.failed"
    assert stream.feed(piece(1, "")) == []
    assert stream.finish() == []


def test_a_null_error_beside_the_usage_is_no_error() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    events, stream = run(
        [chunk({"content": "hi"}, "stop"), {"choices": [], "usage": usage, "error": None}]
    )
    check_with_sdk(events)
    assert events[-1][0] == "response.completed"
    assert stream.response is not None and stream.response["usage"]["input_tokens"] == 3


def test_upstream_error_chunk_fails_the_response() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.start() + stream.feed(chunk({"content": "par"}))
    events += stream.feed({"error": {"code": 500, "message": "context overflow", "type": "server"}})
    check_with_sdk(events)
    kind, data = events[-1]
    assert kind == "response.failed"
    failed = Response.model_validate(data["response"])
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "context overflow")
    # The partial message is kept, marked incomplete.
    output = data["response"]["output"]
    assert [(item["type"], item["status"]) for item in output] == [("message", "incomplete")]
    assert failed.output_text == "par"


def test_error_after_start() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.start() + stream.error("backend went away")
    check_with_sdk(events)
    assert [kind for kind, _ in events][-1] == "response.failed"
    assert stream.error("again") == []
    assert stream.finish() == []
    assert stream.feed(chunk({"content": "x"})) == []


def test_error_before_start_is_a_bare_error_event() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.error("no backend")
    assert events == [
        (
            "error",
            {
                "type": "error",
                "sequence_number": 0,
                "code": "server_error",
                "message": "no backend",
                "param": None,
            },
        )
    ]
    EVENT.validate_python(events[0][1])
    assert stream.response is None


def test_completed_at_is_reported_when_given() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.feed(chunk({"content": "a"}, "stop")) + stream.finish(completed_at=9)
    check_with_sdk(events)
    assert events[-1][1]["response"]["completed_at"] == 9


def test_feed_starts_the_stream_if_needed() -> None:
    stream = ResponsesStream(REQUEST, "resp_s", 1)
    events = stream.feed(chunk({"content": "a"})) + stream.finish()
    check_with_sdk(events)
    assert [kind for kind, _ in events][:2] == ["response.created", "response.in_progress"]
    assert stream.start() == []
