"""Anthropic Messages request -> Chat Completions request.

``messages_to_chat`` returns a new dict and never modifies its argument. It raises
``UnsupportedField(param, message)`` when the request uses something a chat
backend cannot express, and also when the request is not a valid Messages body
(missing or mistyped fields), so either way the client gets a 400 naming the field.

Mapped:
    model, max_tokens, temperature, top_p, top_k (llama.cpp honours it),
    stop_sequences -> stop, stream (+ stream_options.include_usage, so the stream
    can report usage), metadata.user_id -> user, system (string or text blocks)
    -> one leading system message, messages[] (role user/assistant/system),
    tools -> function tools, tool_choice (+ disable_parallel_tool_use ->
    parallel_tool_calls false), output_config.format (json_schema) ->
    response_format.

Content blocks:
    text; image (base64 -> data: URL, url -> URL); tool_use (assistant) ->
    tool_calls with ``arguments`` the JSON text of ``input``; tool_result (user) ->
    ``role: tool`` messages placed before the rest of that user turn, as chat
    requires tool results to follow the assistant's calls directly; an error
    result is prefixed with ``Error: ``; thinking / redacted_thinking (assistant)
    are dropped: chat requests have no standard field for past reasoning, and
    reasoning models' templates strip it from earlier turns anyway.
    A user turn that is one text block becomes a plain string; with images or
    several blocks, a list of parts. Consecutive user messages are folded into
    one, as Anthropic combines them and many chat templates demand alternation.

Ignored, because they change nothing a local backend could honour:
    cache_control (anywhere), citations on text blocks, metadata other than
    user_id, service_tier, speed, inference_geo, diagnostics, user_profile_id,
    workspace_id, output_config.effort, and ``thinking`` (whether a model reasons
    is fixed by how its server was started; any reasoning it returns still comes
    back as thinking blocks). Tool fields other than name, description,
    input_schema and strict (e.g. input_examples, defer_loading) are dropped too.

Unsupported (UnsupportedField): server tools (any tool ``type`` but ``custom``),
document, search_result and server-tool result blocks, file image sources,
images inside tool results, and any top-level field not listed above (e.g.
container, mcp_servers, context_management): the real API rejects unknown
fields as well, and silently dropping one could change what the client asked for.
"""

from __future__ import annotations

import json
from typing import Any

from slm_server.translate.errors import InvalidField, UnsupportedField
from slm_server.translate.fields import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    OBJECT,
    STRING,
    Kind,
    check_fields,
    required,
)

_PASSTHROUGH = ("model", "max_tokens", "temperature", "top_p", "top_k")
_HANDLED = frozenset(
    {
        *_PASSTHROUGH,
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "output_config",
    }
)
_IGNORED = frozenset(
    {
        "cache_control",
        "thinking",
        "service_tier",
        "speed",
        "inference_geo",
        "diagnostics",
        "user_profile_id",
        "workspace_id",
    }
)
# The type of each top-level field the conversion reads (the rest are checked as read).
_FIELD_KINDS: dict[str, Kind] = {
    "model": STRING,
    "max_tokens": INTEGER,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "top_k": INTEGER,
    "stream": BOOLEAN,
    "metadata": OBJECT,
}
# What each block type must hold, beyond its ``type``; optional fields may be absent.
_BLOCK_REQUIRED: dict[str, dict[str, Kind]] = {
    "text": {"text": STRING},
    "tool_use": {"id": STRING, "name": STRING},
    "tool_result": {"tool_use_id": STRING},
}
_BLOCK_OPTIONAL: dict[str, dict[str, Kind]] = {
    "tool_use": {"input": OBJECT},
    "tool_result": {"is_error": BOOLEAN},
    "image": {"source": OBJECT},
}
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions request equivalent to the Messages request ``body``."""
    for key in body:
        if key not in _HANDLED and key not in _IGNORED:
            raise UnsupportedField(key, f"`{key}` is not supported by this server")
    for key in ("model", "messages", "max_tokens"):
        if key not in body:
            raise InvalidField(key, f"`{key}` is required")
    check_fields(body, _FIELD_KINDS)
    chat: dict[str, Any] = {key: body[key] for key in _PASSTHROUGH if body.get(key) is not None}

    messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _plain_text(body["system"], "system")})
    turns = body["messages"]
    if not isinstance(turns, list):
        raise InvalidField("messages", "`messages` must be a list")
    for i, turn in enumerate(turns):
        for message in _turn(turn, f"messages[{i}]"):
            _append(messages, message)
    chat["messages"] = messages

    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidField("stop_sequences", "`stop_sequences` must be a list of strings")
        chat["stop"] = list(stop)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        check_fields(metadata, {"user_id": STRING}, "metadata.")
    user_id = metadata.get("user_id") if metadata is not None else None
    if user_id is not None:
        chat["user"] = user_id
    if body.get("tools"):
        if not isinstance(body["tools"], list):
            raise InvalidField("tools", "`tools` must be a list")
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        chat.update(_tool_choice(body["tool_choice"]))
    if body.get("output_config") is not None:
        chat.update(_output_config(body["output_config"]))
    return chat


def count_tokens_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A one-token, non-streaming chat request whose ``usage.prompt_tokens`` is the count.

    ``body`` is a ``/v1/messages/count_tokens`` request: a Messages request
    without ``max_tokens``.
    """
    return messages_to_chat({**body, "max_tokens": 1, "stream": False})


def chat_usage_to_count(chat: dict[str, Any]) -> dict[str, Any]:
    """The ``count_tokens`` response for the backend's answer to ``count_tokens_to_chat``."""
    usage = chat.get("usage") or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0)}


def _append(messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """Add ``message``, folding a user message into a user message just before it.

    Anthropic combines consecutive user turns, and many chat templates reject
    two user messages in a row.
    """
    if messages and message["role"] == "user" and messages[-1]["role"] == "user":
        last = messages[-1]
        last["content"] = _as_parts(last["content"]) + _as_parts(message["content"])
    else:
        messages.append(message)


def _as_parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _turn(turn: Any, where: str) -> list[dict[str, Any]]:
    """The chat messages for one Messages turn (a user turn may become several)."""
    if not isinstance(turn, dict):
        raise InvalidField(where, "each message must be an object")
    role, content = turn.get("role"), turn.get("content")
    if role == "system":
        return [{"role": "system", "content": _plain_text(content, f"{where}.content")}]
    if role not in ("user", "assistant"):
        raise UnsupportedField(f"{where}.role", f"unknown role {role!r}")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidField(f"{where}.content", "content must be a string or a list of blocks")
    if role == "assistant":
        return [_assistant(content, f"{where}.content")]
    return _user(content, f"{where}.content")


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "tool_result":
            tool_messages.append(_tool_result(block, at))
        elif kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, at))
        else:
            raise UnsupportedField(f"{at}.type", f"`{kind}` blocks are not supported in user turns")
    if not parts:
        return tool_messages
    # One text block stays a plain string: the shape every chat template accepts.
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise UnsupportedField(
                f"{at}.type", f"`{kind}` blocks are not supported in assistant turns"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        if not texts:
            message["content"] = None
    return message


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces: list[str] = []
        for k, inner in enumerate(content):
            kind = _block_type(inner, f"{where}.content[{k}]")
            if kind != "text":
                raise UnsupportedField(
                    f"{where}.content[{k}].type",
                    f"tool results can only hold text for a chat backend, not `{kind}`",
                )
            pieces.append(inner["text"])
        text = "\n\n".join(pieces)
    else:
        raise InvalidField(
            f"{where}.content", f"`{where}.content` must be a string or a list of blocks"
        )
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        source = {}
    kind = source.get("type")
    check_fields(source, {"media_type": STRING, "data": STRING, "url": STRING}, f"{where}.source.")
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise UnsupportedField(f"{where}.source.media_type", f"unknown {media_type!r}")
        url = f"data:{media_type};base64,{source.get('data', '')}"
    elif kind == "url":
        url = source.get("url", "")
    else:
        raise UnsupportedField(
            f"{where}.source.type", f"image source {kind!r} is not supported (use base64 or url)"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _plain_text(value: Any, where: str) -> str:
    """A string, or the text of a list of text blocks joined by blank lines."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidField(where, f"`{where}` must be a string or a list of text blocks")
    texts: list[str] = []
    for j, block in enumerate(value):
        kind = _block_type(block, f"{where}[{j}]")
        if kind != "text":
            raise UnsupportedField(f"{where}[{j}].type", f"only text blocks fit here, not `{kind}`")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _block_type(block: Any, where: str) -> str:
    """The block's ``type``, after checking the fields that type requires are there."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidField(f"{where}.type", "each content block must be an object with a type")
    kind: str = block["type"]
    for key, field_kind in _BLOCK_REQUIRED.get(kind, {}).items():
        if key not in block:
            raise InvalidField(f"{where}.{key}", f"`{where}.{key}` is required in `{kind}` blocks")
        required(block, key, field_kind, where)
    check_fields(block, _BLOCK_OPTIONAL.get(kind, {}), f"{where}.")
    return kind


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidField(where, "each tool must be an object")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise UnsupportedField(
            f"{where}.type",
            f"server tool {kind!r} is not available; only client tools (name, input_schema) are",
        )
    for key, field_kind in (("name", STRING), ("input_schema", OBJECT)):
        if key not in tool:
            raise InvalidField(f"{where}.{key}", f"`{where}.{key}` is required in tools")
        required(tool, key, field_kind, where)
    check_fields(tool, {"description": STRING, "strict": BOOLEAN}, f"{where}.")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or kind not in ("auto", "any", "tool", "none"):
        raise UnsupportedField("tool_choice.type", f"unknown tool_choice {kind!r}")
    out: dict[str, Any]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidField("tool_choice.name", "`tool_choice.name` is required for type tool")
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        out = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}[kind]}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def _output_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InvalidField("output_config", "`output_config` must be an object")
    for key in config:
        if key not in ("format", "effort"):
            raise UnsupportedField(f"output_config.{key}", f"`{key}` is not supported")
    fmt = config.get("format")
    if fmt is None:
        return {}
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or "schema" not in fmt:
        raise UnsupportedField(
            "output_config.format", "only {type: json_schema, schema} formats are supported"
        )
    required(fmt, "schema", OBJECT, "output_config.format")
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    }
