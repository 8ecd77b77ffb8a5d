"""A Responses API request (``POST /v1/responses``) as a Chat Completions request.

Converted: ``model``, ``instructions``, ``input`` (a string, or a list of
``message``, ``function_call``, ``function_call_output`` and ``reasoning``
items), ``tools`` of type ``function``, ``tool_choice``, ``max_output_tokens``,
``temperature``, ``top_p``, ``stream``, ``text.format``, ``parallel_tool_calls``,
``user`` and ``reasoning.effort``.

Ignored, because dropping them changes nothing a chat backend could honour:

- ``metadata``, ``store`` and ``previous_response_id``: the router's business
  (echoing, the response store; the earlier turns arrive as ``history``).
- ``reasoning`` items in ``input`` and ``reasoning.summary``: chat templates drop
  earlier turns' reasoning anyway, and no summary is ever produced.
- ``truncation``: ``"auto"`` is accepted but not performed; an over-long
  conversation fails exactly as with ``"disabled"``.
- ``include`` (except logprobs), ``text.verbosity``, ``stream_options``,
  ``service_tier``, ``safety_identifier``, ``prompt_cache_key``,
  ``prompt_cache_retention``, ``prompt_cache_options``, ``max_tool_calls`` (it
  counts hosted tool calls, which are rejected), ``context_management``, the
  ``status``/``id``/``phase`` of input items and any field this module does not
  know.

Rejected with :class:`UnsupportedField`: hosted tools (``web_search``,
``file_search``, ``mcp``, ...), a ``tool_choice`` naming one or restricting to
``allowed_tools``, images by ``file_id``, ``input_file`` parts, input items
other than the four above (``item_reference`` included: nothing here can look
items up), ``background``, ``conversation``, ``prompt``, ``moderation`` and
logprobs (``top_logprobs``, ``include: message.output_text.logprobs``), which
the output conversion does not carry.
"""

from __future__ import annotations

from typing import Any

from slm_server.translate.errors import InvalidField, UnsupportedField
from slm_server.translate.fields import (
    BOOLEAN,
    INTEGER,
    LIST,
    NUMBER,
    OBJECT,
    STRING,
    Kind,
    check_fields,
    string_list,
)

# Chat Completions knows only these image details; "original" has no equivalent,
# so it falls back to the backend's default.
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})
_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}

# Request fields that need a server-side feature this router does not have; a
# client relying on them would silently get something else.
_REJECTED_FIELDS = {
    "conversation": "the Conversations API is not available; use previous_response_id",
    "prompt": "stored prompt templates are not available",
    "moderation": "moderation is not available",
}

# The type of each top-level field the conversion reads or echoes (input,
# instructions, tools and tool_choice are checked item by item as they are read).
_FIELD_KINDS: dict[str, Kind] = {
    "model": STRING,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "max_output_tokens": INTEGER,
    "parallel_tool_calls": BOOLEAN,
    "user": STRING,
    "stream": BOOLEAN,
    "store": BOOLEAN,
    "background": BOOLEAN,
    "metadata": OBJECT,
    "text": OBJECT,
    "reasoning": OBJECT,
    "previous_response_id": STRING,
    "truncation": STRING,
    "top_logprobs": INTEGER,
    "include": LIST,
}
_TOOL_KINDS: dict[str, Kind] = {"description": STRING, "parameters": OBJECT, "strict": BOOLEAN}


def responses_to_chat(
    body: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Chat Completions request equivalent to the Responses request ``body``.

    ``history`` is the chat messages of the turns before this one (the caller
    resolves ``previous_response_id`` to them); they follow the instructions and
    precede this request's input. Neither argument is modified, though the
    result shares the history's messages, and values passed through unchanged
    (tool parameter schemas, the JSON schema) with ``body``. Raises :class:`UnsupportedField`
    naming the offending field for anything a chat backend cannot be asked, and
    :class:`InvalidField` for a field of the wrong type.
    """
    check_request(body)
    _reject_unsupported_fields(body)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        messages.extend(input_items_to_messages(instructions, "instructions"))
    elif instructions is not None:
        raise InvalidField("instructions", "instructions must be a string or a list of items")
    messages.extend(input_messages(body, history))
    if not messages:
        raise InvalidField("input", "input is required")

    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    _copy_if_set(body, chat, "temperature", "temperature")
    _copy_if_set(body, chat, "top_p", "top_p")
    _copy_if_set(body, chat, "max_output_tokens", "max_tokens")
    _copy_if_set(body, chat, "parallel_tool_calls", "parallel_tool_calls")
    _copy_if_set(body, chat, "user", "user")
    if body.get("stream"):
        chat["stream"] = True
        # Without it a chat backend sends no usage, and response.completed needs it.
        chat["stream_options"] = {"include_usage": True}

    tools = body.get("tools")
    if tools:
        chat["tools"] = _tools(tools)
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])

    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format

    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    return chat


def check_request(body: dict[str, Any]) -> None:
    """InvalidField unless the top-level fields the conversion reads have their types.

    :func:`responses_to_chat` calls it; callers that read such a field before
    converting (``previous_response_id``) call it first.
    """
    check_fields(body, _FIELD_KINDS)
    string_list(body.get("include"), "include")


def input_messages(
    body: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The conversation so far as chat messages: ``history``, then ``body["input"]``.

    Unlike :func:`responses_to_chat` this leaves out ``instructions``, which
    OpenAI does not carry over to a follow-up turn; it is what the response
    store keeps, together with the turn's output.
    """
    # The history's messages are shared, not copied: the store decodes a fresh history
    # for each request, and this is called twice with it (the request, then the turn
    # to store), so neither call may change it.
    messages = list(history) if history else []
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        # Appended after the history so a function_call that opens the input joins the
        # assistant message ending the history, as it would if the client had replayed
        # the earlier items instead; that one message is copied for it.
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "assistant":
            messages[-1] = {**last}
            if isinstance(last.get("tool_calls"), list):
                messages[-1]["tool_calls"] = list(last["tool_calls"])
        _append_items(messages, raw, "input")
    elif raw is not None:
        raise InvalidField("input", "input must be a string or a list of items")
    return messages


def input_items_to_messages(items: list[Any], param: str = "input") -> list[dict[str, Any]]:
    """Responses input items as chat messages, in order.

    Output items of an earlier response are valid input items too, so this also
    turns a response's ``output`` back into chat messages. ``function_call``
    items join the assistant message right before them (a Responses turn is
    ``[message, function_call, ...]`` where chat has one assistant message with
    ``tool_calls``). ``param`` prefixes the field path in errors.
    """
    messages: list[dict[str, Any]] = []
    _append_items(messages, items, param)
    return messages


def _append_items(messages: list[dict[str, Any]], items: list[Any], param: str) -> None:
    for index, item in enumerate(items):
        path = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise InvalidField(path, f"`{path}` must be an object (an input item)")
        # EasyInputMessage may leave out "type"; a role makes it a message.
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, path))
        elif kind == "function_call":
            _append_tool_call(messages, item, path)
        elif kind == "function_call_output":
            messages.append(_tool_result(item, path))
        elif kind == "reasoning":
            continue
        else:
            raise UnsupportedField(
                f"{path}.type",
                f"input items of type {kind!r} cannot be sent to a chat backend; "
                "use message, function_call, function_call_output or reasoning items",
            )


def _message(item: dict[str, Any], path: str) -> dict[str, Any]:
    given = item.get("role")
    role = _ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        raise UnsupportedField(f"{path}.role", f"role {given!r} is not one of {', '.join(_ROLES)}")
    return {"role": role, "content": _content(item.get("content"), role, f"{path}.content")}


def _content(content: Any, role: str, path: str) -> str | list[dict[str, Any]]:
    """A message's content: one string when it is all text, else chat content parts.

    Text-only content becomes a string because several chat templates (and
    some backends) accept nothing else for system and assistant messages.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(path, "content must be a string or a list of parts")
    parts = [_content_part(part, role, f"{path}[{i}]") for i, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _content_part(part: Any, role: str, path: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidField(path, f"`{path}` must be an object (a content part)")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part, "text", path)}
    if kind == "refusal":
        # Chat has no refusal part; as text, the model still sees what it said.
        return {"type": "text", "text": _string(part, "refusal", path)}
    if kind == "input_image":
        if role != "user":
            raise UnsupportedField(f"{path}.type", "chat accepts images in user messages only")
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise UnsupportedField(
                f"{path}.file_id" if part.get("file_id") else f"{path}.image_url",
                "images must be given as image_url (a URL or data: URL); "
                "file_id needs the Files API, which is not available",
            )
        image: dict[str, Any] = {"url": url}
        check_fields(part, {"detail": STRING}, f"{path}.")
        if part.get("detail") in _IMAGE_DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise UnsupportedField(
        f"{path}.type", f"content parts of type {kind!r} cannot be sent to a chat backend"
    )


def _append_tool_call(messages: list[dict[str, Any]], item: dict[str, Any], path: str) -> None:
    call = {
        "id": _string(item, "call_id", path),
        "type": "function",
        "function": {
            "name": _string(item, "name", path),
            "arguments": _string(item, "arguments", path),
        },
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_result(item: dict[str, Any], path: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for i, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                raise UnsupportedField(
                    f"{path}.output[{i}]", "chat tool results can carry text only"
                )
            texts.append(_string(part, "text", f"{path}.output[{i}]"))
        output = "\n".join(texts)
    elif not isinstance(output, str):
        raise InvalidField(f"{path}.output", "output must be a string or a list of parts")
    return {"role": "tool", "tool_call_id": _string(item, "call_id", path), "content": output}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidField("tools", "tools must be a list")
    converted = []
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UnsupportedField(
                f"{path}.type",
                f"tools of type {kind!r} need OpenAI's hosted tools; only function tools "
                "can be offered to a chat backend",
            )
        function: dict[str, Any] = {"name": _string(tool, "name", path)}
        check_fields(tool, _TOOL_KINDS, f"{path}.")
        for key in _TOOL_KINDS:
            if tool.get(key) is not None:
                function[key] = tool[key]
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> str | dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise UnsupportedField(
        "tool_choice",
        f"tool_choice {kind!r} cannot be expressed for a chat backend; use auto, none, "
        "required or {type: function, name}",
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict) or text.get("format") is None:
        return None
    if not isinstance(text["format"], dict):
        raise InvalidField("text.format", "`text.format` must be an object")
    fmt = text["format"]
    check_fields(fmt, {"schema": OBJECT, "description": STRING, "strict": BOOLEAN}, "text.format.")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": _string(fmt, "name", "text.format"),
            "schema": fmt.get("schema", {}),
        }
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise UnsupportedField("text.format.type", f"text format {kind!r} is not supported")


def _reject_unsupported_fields(body: dict[str, Any]) -> None:
    for field, reason in _REJECTED_FIELDS.items():
        if body.get(field) is not None:
            raise UnsupportedField(field, reason)
    if body.get("background"):
        raise UnsupportedField("background", "background responses are not available")
    if body.get("top_logprobs"):
        raise UnsupportedField("top_logprobs", "logprobs are not available")
    if "message.output_text.logprobs" in string_list(body.get("include"), "include"):
        raise UnsupportedField("include", "logprobs are not available")


def _copy_if_set(source: dict[str, Any], target: dict[str, Any], key: str, as_key: str) -> None:
    if source.get(key) is not None:
        target[as_key] = source[key]


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidField(f"{path}.{key}", f"`{path}.{key}` must be a string")
    return value
