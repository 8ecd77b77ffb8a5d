"""Chat Completions stream -> Anthropic Messages stream events.

``MessagesStream`` is fed the upstream's parsed ``chat.completion.chunk`` objects
one at a time and returns the Anthropic events each one produces, as
``(event_name, data)`` pairs ready for ``sse_frame``. Call ``start`` once, then
``feed`` per chunk, then ``finish`` at ``[DONE]`` or ``error`` if the upstream
fails; the events then follow Anthropic's grammar::

    message_start
    (content_block_start content_block_delta* content_block_stop)*
    message_delta message_stop

Reasoning deltas become a ``thinking`` block (closed with a ``signature_delta``,
as the SDK expects), content deltas a ``text`` block, and each tool call a
``tool_use`` block whose arguments arrive as ``input_json_delta`` pieces. When
the kind of delta changes, the open block is closed and the next one opened at
the following index. Nothing is held back: every delta is emitted as soon as it
is fed.

Usage is only known from the last upstream chunk (``stream_options.include_usage``),
so ``message_start`` reports zeros and ``message_delta`` carries the real input
and output counts; the SDK's accumulator takes both from there.
"""

from __future__ import annotations

from typing import Any

from slm_server.translate.anthropic_response import (
    THINKING_SIGNATURE,
    error_body,
    message_usage,
    reasoning_text,
    stop_reason,
    tool_use_id,
)

Event = tuple[str, dict[str, Any]]


class MessagesStream:
    """State machine turning one chat stream into one Anthropic message stream."""

    def __init__(self, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self._next_index = 0
        # The open block: "thinking", "text", ("tool", upstream index), or None.
        self._open: str | tuple[str, int] | None = None
        self._closed_tools: set[int] = set()
        self._used_tools = False
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def start(self) -> list[Event]:
        """``message_start``: an empty message, usage still zero."""
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": message_usage(None),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events for one upstream chunk (often none, e.g. for the role-only first chunk).

        A chunk carrying an ``error`` object instead of choices (llama-server's way
        to fail mid-stream) yields ``error``'s event. Raises ValueError if a tool
        call's arguments resume after another block began: Anthropic blocks
        cannot be reopened, and backends stream calls one after another.
        """
        if chunk.get("error") is not None and not chunk.get("choices"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            return self.error(str(message or "upstream error"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # only one choice is ever requested
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                events += self._switch_to("thinking")
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                events += self._switch_to("text")
                events.append(self._delta({"type": "text_delta", "text": text}))
            for position, call in enumerate(delta.get("tool_calls") or []):
                events += self._tool_call(call, position)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        """At ``[DONE]``: close the open block, then ``message_delta`` and ``message_stop``."""
        events = self._close()
        reason = stop_reason(self._finish_reason, used_tools=self._used_tools)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": message_usage(self._usage),
        }
        events.append(("message_delta", delta))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def error(self, message: str, status: int = 500) -> list[Event]:
        """An ``error`` event for an upstream failure mid-stream; the stream ends there."""
        return [("error", error_body(status, message))]

    def _tool_call(self, call: dict[str, Any], position: int) -> list[Event]:
        index = call.get("index", position)
        function = call.get("function") or {}
        events: list[Event] = []
        if self._open != ("tool", index):
            if index in self._closed_tools:
                raise ValueError(f"tool call {index} resumed after another block began")
            events += self._close()
            self._open = ("tool", index)
            self._used_tools = True
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(self._message_id, index),
                "name": function.get("name") or "",
                "input": {},
            }
            events.append(self._start(block))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def _switch_to(self, kind: str) -> list[Event]:
        if self._open == kind:
            return []
        events = self._close()
        self._open = kind
        block: dict[str, Any]
        if kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        events.append(self._start(block))
        return events

    def _start(self, block: dict[str, Any]) -> Event:
        data = {"type": "content_block_start", "index": self._next_index, "content_block": block}
        return ("content_block_start", data)

    def _delta(self, delta: dict[str, Any]) -> Event:
        data = {"type": "content_block_delta", "index": self._next_index, "delta": delta}
        return ("content_block_delta", data)

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        if self._open == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": THINKING_SIGNATURE}))
        elif isinstance(self._open, tuple):
            self._closed_tools.add(self._open[1])
        stop = {"type": "content_block_stop", "index": self._next_index}
        events.append(("content_block_stop", stop))
        self._open = None
        self._next_index += 1
        return events
