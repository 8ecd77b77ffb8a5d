"""Chat Completions response -> Anthropic ``message``, and Anthropic error bodies.

Decisions a client may notice:

* Reasoning (``reasoning_content``, or ``reasoning`` as some servers name it)
  becomes a leading ``thinking`` block signed with ``THINKING_SIGNATURE``: the
  field is required, nothing can verify it, and the request converter drops
  thinking blocks sent back, so a fixed marker round-trips harmlessly.
* Tool call ``arguments`` that are not a JSON object (truncated or malformed
  output from a small model) become ``input: {"_raw_arguments": "<text>"}``:
  ``input`` must be an object, and keeping the text lets the client report the
  bad call back to the model instead of running the tool with ``{}``. Empty
  arguments become ``{}``.
* ``stop_sequence`` is always null and a matched stop sequence reports
  ``end_turn``: llama-server and mlx strip the matched sequence and their
  ``finish_reason`` is ``stop`` either way, so which one matched is unknowable.
* A completion with tool calls reports ``tool_use`` even if the backend said
  ``stop``, as clients decide whether to run tools from ``stop_reason``.
* Usage follows Anthropic's split: ``input_tokens`` excludes prompt tokens the
  backend reused from its cache, which are ``cache_read_input_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

THINKING_SIGNATURE = "slm-server-unsigned"

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def chat_to_message(chat: dict[str, Any], model: str, message_id: str) -> dict[str, Any]:
    """The Anthropic ``message`` for a non-streaming ``chat.completion``.

    ``model`` is the name the client asked for (backends report a file path);
    ``message_id`` is the caller's ``msg_...`` id. Only the first choice is read.
    """
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []

    reasoning = reasoning_text(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": THINKING_SIGNATURE})
    text = _text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(message_id, i),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )

    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), used_tools=bool(calls)),
        "stop_sequence": None,
        "usage": message_usage(chat.get("usage")),
    }


def stop_reason(finish_reason: str | None, *, used_tools: bool) -> str:
    """Anthropic's ``stop_reason`` for a chat ``finish_reason`` (``end_turn`` if unknown).

    ``used_tools`` says whether the message holds tool_use blocks: ``tool_use`` is
    reported exactly when it does, unless the output was cut short or filtered.
    """
    reason = _STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if reason == "end_turn" and used_tools:
        return "tool_use"
    # Without a tool_use block the client would wait for calls that never came.
    if reason == "tool_use" and not used_tools:
        return "end_turn"
    return reason


def message_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage for a chat ``usage`` object (all zeros when the backend gave none)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    cached = min(cached, prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def reasoning_text(delta_or_message: dict[str, Any]) -> str:
    """The reasoning text of a chat message or stream delta, under either field name."""
    for key in ("reasoning_content", "reasoning"):
        value = delta_or_message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` as the object Anthropic's ``input`` must be."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"_raw_arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}


def tool_use_id(message_id: str, index: int) -> str:
    """An id for a tool call the backend sent without one, unique within the message."""
    return f"toolu_{message_id.removeprefix('msg_')}_{index}"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error envelope for an HTTP ``status``."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status; other 4xx/5xx fall back by class."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def openai_error_to_anthropic(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """Our OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` as Anthropic's.

    The type comes from ``status``; ``param``, when set and not already in the
    message, prefixes it (``"tools[0].type: ..."``), as Anthropic's messages name
    the field. Any other body shape still yields a valid envelope.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        param = error.get("param")
        if param and str(param) not in message:
            message = f"{param}: {message}" if message else str(param)
    elif isinstance(error, str):
        message = error
    else:
        message = ""
    return error_body(status, message or f"upstream error (HTTP {status})")


def _text(content: Any) -> str:
    """Chat message content as text; some servers send a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
