"""Chat Completions stream chunks: the error a chunk may carry, and a whole answer as chunks."""

from __future__ import annotations

from typing import Any

_DELTA_FIELDS = ("role", "content", "reasoning_content", "reasoning")


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The message of the ``error`` a chunk carries instead of choices, else None.

    llama-server sends ``{"error": {...}}``; other servers send a bare string.
    """
    error = chunk.get("error")
    if error is None or chunk.get("choices"):
        return None
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) and message else str(error)
    return str(error) or "upstream error"


def completion_as_chunks(completion: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A whole ``chat.completion`` as the chunks a stream of it would have carried.

    For a backend that ignores ``stream: true`` and answers at once: the stream
    converters are fed these so the client still gets its stream. None when
    ``completion`` is not a chat completion (no choice holding a message).
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return None
    delta = {key: message[key] for key in _DELTA_FIELDS if message.get(key) is not None}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [
            {**call, "index": position}
            for position, call in enumerate(calls)
            if isinstance(call, dict)
        ]
    finish = choice.get("finish_reason")
    chunks = [{"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}]
    if isinstance(completion.get("usage"), dict):
        chunks.append({"choices": [], "usage": completion["usage"]})
    return chunks
