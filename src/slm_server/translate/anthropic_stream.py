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
the following index.

Anthropic blocks cannot interleave or be reopened, but a chat backend may send
the pieces of parallel tool calls interleaved (index 0, 1, 0, ...). So only the
first tool call of a run streams live; calls that start while it is open are
held and sent whole, each as one block, when it closes (at the next text or
thinking, or at the end: a chat stream does not say when a call is complete).
Everything else is emitted as soon as it is fed. A piece for a call already
sent whole or closed (it would have to follow text the client already has)
cannot be placed, and held arguments past ``MAX_EVENT_BYTES`` are more than a
client is sent as one event: either way the stream ends with an ``error`` event.

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
from slm_server.translate.chat_chunks import chunk_error
from slm_server.translate.sse import MAX_EVENT_BYTES

Event = tuple[str, dict[str, Any]]


class _HeldCall:
    """A tool call that began while another was streaming: sent whole once that one ends."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class MessagesStream:
    """State machine turning one chat stream into one Anthropic message stream."""

    def __init__(self, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self._next_index = 0
        # The open block: "thinking", "text", ("tool", upstream index), or None.
        self._open: str | tuple[str, int] | None = None
        self._closed_tools: set[int] = set()
        self._held: dict[int, _HeldCall] = {}  # by upstream index, in order of arrival
        self._held_bytes = 0  # their arguments' length together, bounded
        self._used_tools = False
        self._ended = False
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

        A chunk carrying an ``error`` (an object or a string) instead of choices
        (llama-server's way to fail mid-stream) yields ``error``'s event. Once the
        stream has ended (an error) every call returns ``[]``.
        """
        if self._ended:
            return []
        message = chunk_error(chunk)
        if message is not None:
            return self.error(message)
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
                if self._ended:
                    return events
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        """At ``[DONE]``: close the open block, then ``message_delta`` and ``message_stop``."""
        if self._ended:
            return []
        self._ended = True
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
        if self._ended:
            return []
        self._ended = True
        return [("error", error_body(status, message))]

    def _tool_call(self, call: dict[str, Any], position: int) -> list[Event]:
        index = call.get("index", position)
        function = call.get("function") or {}
        arguments = function.get("arguments")
        events: list[Event] = []
        if index in self._held:
            return self._hold(self._held[index], call)
        if self._open != ("tool", index):
            if index in self._closed_tools:
                return self.error(
                    f"the backend sent more of tool call {index} after it was complete"
                )
            if isinstance(self._open, tuple):  # another call is streaming: this one waits
                self._held[index] = _HeldCall()
                return self._hold(self._held[index], call)
            events += self._close()
            self._open = ("tool", index)
            self._used_tools = True
            events.append(
                self._start(self._tool_block(call.get("id"), function.get("name"), index))
            )
        if isinstance(arguments, str) and arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def _tool_block(self, call_id: Any, name: Any, index: int) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": call_id or tool_use_id(self._message_id, index),
            "name": name or "",
            "input": {},
        }

    def _hold(self, held: _HeldCall, call: dict[str, Any]) -> list[Event]:
        """Add ``call``'s piece to ``held``; the stream's ``error`` past the bound, else none."""
        function = call.get("function") or {}
        if call.get("id") and not held.id:
            held.id = call["id"]
        if function.get("name") and not held.name:
            held.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._held_bytes += len(arguments.encode())
            if self._held_bytes > MAX_EVENT_BYTES:
                return self.error(
                    f"the backend's parallel tool calls exceed {MAX_EVENT_BYTES} bytes of "
                    "arguments held while an earlier call streams"
                )
            held.arguments.append(arguments)
        return []

    def _send_held(self) -> list[Event]:
        """Each held call as one whole block, in the order they began."""
        events: list[Event] = []
        held, self._held, self._held_bytes = self._held, {}, 0
        for index, call in held.items():
            events.append(self._start(self._tool_block(call.id, call.name, index)))
            arguments = "".join(call.arguments)
            if arguments:
                events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self._next_index})
            )
            self._closed_tools.add(index)
            self._next_index += 1
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

    def _stop(self) -> Event:
        """The open block's ``content_block_stop``; the next block takes the next index."""
        stop = {"type": "content_block_stop", "index": self._next_index}
        self._next_index += 1
        return ("content_block_stop", stop)

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        if self._open == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": THINKING_SIGNATURE}))
        events.append(self._stop())
        if isinstance(self._open, tuple):
            self._closed_tools.add(self._open[1])
            events += self._send_held()
        self._open = None
        return events
