"""A Chat Completions result as a Responses API ``response`` object, and back.

The output is what OpenAI returns for the same turn: a ``reasoning`` item when
the backend separated out reasoning (``reasoning_content``), a ``message`` item
with one ``output_text`` part, then one ``function_call`` item per tool call.
Item ids are derived from the response id and the item's position, so a
streamed and a non-streamed conversion of the same turn agree.

Not carried: logprobs and ``refusal`` (local backends produce neither), and
choices after the first (Responses has no ``n``).
"""

from __future__ import annotations

from typing import Any

from slm_server.translate.responses_request import input_items_to_messages

# OpenAI's own item id prefixes; clients sometimes switch on them.
MESSAGE_PREFIX = "msg"
REASONING_PREFIX = "rs"
FUNCTION_CALL_PREFIX = "fc"
CALL_ID_PREFIX = "call"

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def chat_to_response(
    chat: dict[str, Any],
    request: dict[str, Any],
    response_id: str,
    created_at: int,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The ``response`` object for the ``chat.completion`` ``chat``.

    ``request`` is the Responses request it answers, echoed the way OpenAI echoes
    it (model, instructions, tools, tool_choice, sampling settings...). The
    status is ``incomplete`` (with ``incomplete_details.reason``) when the
    backend stopped for length or a content filter, else ``completed``; the last
    output item then carries the same status. ``completed_at`` is reported only
    when given and the response completed.
    """
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    reason = incomplete_reason(choice.get("finish_reason"))

    output: list[dict[str, Any]] = []
    reasoning = reasoning_text(message)
    if reasoning:
        output.append(
            reasoning_item(item_id(REASONING_PREFIX, response_id, len(output)), reasoning)
        )
    content = message.get("content") or ""
    tool_calls = message.get("tool_calls") or []
    if content or not tool_calls:
        output.append(message_item(item_id(MESSAGE_PREFIX, response_id, len(output)), content))
    for position, call in enumerate(tool_calls):
        function = call.get("function") or {}
        output.append(
            function_call_item(
                item_id(FUNCTION_CALL_PREFIX, response_id, len(output)),
                call.get("id") or item_id(CALL_ID_PREFIX, response_id, position),
                function.get("name") or "",
                function.get("arguments") or "",
            )
        )
    if reason is not None:
        output[-1]["status"] = "incomplete"

    return response_object(
        request,
        response_id,
        created_at,
        status="completed" if reason is None else "incomplete",
        output=output,
        usage=usage_from_chat(chat.get("usage")),
        incomplete=reason,
        completed_at=completed_at,
    )


def response_output_as_chat_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistant turn of ``response`` as chat messages (for the history store).

    One assistant message with the text as ``content`` and the function calls as
    ``tool_calls``; the reasoning is left out, as it is when the same items come
    back as input. Empty when the response has no output.
    """
    return input_items_to_messages(list(response.get("output") or []), "output")


def response_object(
    request: dict[str, Any],
    response_id: str,
    created_at: int,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """A ``response`` object with the request's settings echoed around ``output``.

    Fields the SDK requires get OpenAI's defaults when the request left them out
    (``tool_choice: "auto"``, ``parallel_tool_calls: true``, ``tools: []``...).
    """
    text = request.get("text")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete is not None else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model") or "",
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": request.get("store") is not False,
        "temperature": request.get("temperature"),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": list(request.get("tools") or []),
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat ``usage`` in Responses terms, or None when the backend sent none."""
    if not usage:
        return None
    input_tokens = int(usage.get("prompt_tokens") or 0)
    output_tokens = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)
        },
        "total_tokens": int(usage.get("total_tokens") or input_tokens + output_tokens),
    }


def incomplete_reason(finish_reason: Any) -> str | None:
    """``incomplete_details.reason`` for a chat ``finish_reason``; None when it completed."""
    return _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning in a chat message or delta.

    llama.cpp and most servers call it ``reasoning_content``; vLLM's newer
    releases and some proxies call it ``reasoning``.
    """
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    """A deterministic id for the output item at ``output_index`` of ``response_id``."""
    base = response_id.removeprefix("resp_")
    return f"{prefix}_{base}_{output_index}"


def message_item(
    message_id: str, text: str, status: str = "completed", *, with_part: bool = True
) -> dict[str, Any]:
    """An assistant ``message`` output item with one ``output_text`` part holding ``text``.

    ``with_part=False`` gives the empty item announced when streaming starts it.
    """
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text_part(text)] if with_part else [],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(
    reasoning_id: str, text: str, status: str = "completed", *, with_part: bool = True
) -> dict[str, Any]:
    """A ``reasoning`` output item; the text is raw reasoning, so it goes in ``content``."""
    return {
        "id": reasoning_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [reasoning_text_part(text)] if with_part else [],
    }


def reasoning_text_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def function_call_item(
    fc_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A ``function_call`` output item; ``call_id`` is what the tool result must cite."""
    return {
        "id": fc_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
