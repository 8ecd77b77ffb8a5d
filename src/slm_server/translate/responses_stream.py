"""A Chat Completions stream as a Responses API event stream.

:class:`ResponsesStream` is fed one parsed ``chat.completion.chunk`` at a time
and answers with the Responses events that chunk completes, in the order OpenAI
sends them::

    response.created, response.in_progress
    per output item:  response.output_item.added
                      (text/reasoning) response.content_part.added,
                          response.output_text.delta | response.reasoning_text.delta ...,
                          response.output_text.done | response.reasoning_text.done,
                          response.content_part.done
                      (function call) response.function_call_arguments.delta ...,
                          response.function_call_arguments.done
                      response.output_item.done
    response.completed | response.incomplete | response.failed

A text or reasoning item is open alone: a chunk that starts a different item
(reasoning -> text, text -> tool call) closes it first. Tool calls, though, stay
open together until text follows or the stream ends, since a chat backend may
send the pieces of parallel calls interleaved (index 0, 1, 0, ...): each call is
its own item with its own ``output_index`` and ``item_id``, every argument delta
names the item it belongs to, and the open calls' ``.done`` events follow in
output order when they close. Deltas go out as soon as they arrive; the only
state kept is what the ``.done`` events and the final response repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slm_server.translate.chat_chunks import chunk_error
from slm_server.translate.responses_response import (
    CALL_ID_PREFIX,
    FUNCTION_CALL_PREFIX,
    MESSAGE_PREFIX,
    REASONING_PREFIX,
    function_call_item,
    incomplete_reason,
    item_id,
    message_item,
    output_text_part,
    reasoning_item,
    reasoning_text,
    reasoning_text_part,
    response_object,
    usage_from_chat,
)

Event = tuple[str, dict[str, Any]]


@dataclass
class _OpenItem:
    """An output item being streamed: what its closing events must repeat."""

    kind: str  # "message", "reasoning" or "function_call"
    output_index: int
    id: str
    text: str = ""
    # Function calls only.
    tool_index: Any = None  # the upstream's index (JSON: any value)
    call_id: str = ""
    name: str = ""


class ResponsesStream:
    """Turns one chat completion stream into the Responses events for it.

    Call :meth:`start` first (``feed`` and ``finish`` start implicitly if not),
    :meth:`feed` once per chunk, then :meth:`finish` at ``[DONE]``, or
    :meth:`error` if the upstream fails. Each returns ``(event type, data)``
    pairs; ``data`` carries ``type`` and a ``sequence_number`` counting from 0.
    Once the stream has ended (finished or failed) every call returns ``[]``.
    """

    def __init__(self, request: dict[str, Any], response_id: str, created_at: int) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._sequence = 0
        self._started = False
        self._ended = False
        self._output: list[dict[str, Any]] = []
        # Items streamed but not yet done, in output order: one text or reasoning
        # item, or any number of tool calls (also found by their upstream index).
        self._open: list[_OpenItem] = []
        self._open_calls: dict[Any, _OpenItem] = {}
        self._closed_tool_indexes: set[Any] = set()
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._response: dict[str, Any] | None = None

    @property
    def response(self) -> dict[str, Any] | None:
        """The final ``response`` object once the stream has ended, else None."""
        return self._response

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``."""
        if self._started:
            return []
        self._started = True
        snapshot = self._snapshot("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events for one ``chat.completion.chunk`` (an ``error`` payload fails the stream)."""
        if self._ended:
            return []
        events = self.start()
        message = chunk_error(chunk)  # an "error": null beside usage is no error
        if message is not None:
            return events + self.error(message)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            # Responses has no n; other choices have nowhere to go.
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                events += self._text_delta("reasoning", reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                events += self._text_delta("message", content)
            for call in delta.get("tool_calls") or []:
                events += self._tool_call_delta(call)
                if self._ended:
                    return events
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self, completed_at: int | None = None) -> list[Event]:
        """Close the open item and end with ``response.completed`` or ``response.incomplete``.

        A turn that produced neither text nor a tool call still gets an (empty)
        message item, as the non-streaming conversion does. ``completed_at`` is
        reported when given and the response completed.
        """
        if self._ended:
            return []
        events = self.start()
        reason = incomplete_reason(self._finish_reason)
        status = "completed" if reason is None else "incomplete"
        kinds = {item["type"] for item in self._output} | {item.kind for item in self._open}
        if not kinds & {"message", "function_call"}:
            events += self._close_all("completed")
            events += self._open_item("message")
        events += self._close_all(status)
        self._ended = True
        self._response = response_object(
            self._request,
            self._response_id,
            self._created_at,
            status=status,
            output=list(self._output),
            usage=usage_from_chat(self._usage),
            incomplete=reason,
            completed_at=completed_at,
        )
        kind = "response.completed" if reason is None else "response.incomplete"
        return [*events, self._event(kind, response=self._response)]

    def error(self, message: str) -> list[Event]:
        """End the stream after an upstream failure.

        Once ``response.created`` is out this is ``response.failed`` carrying the
        output so far (the open item marked incomplete); before that there is no
        response to fail, so it is a bare ``error`` event.
        """
        if self._ended:
            return []
        self._ended = True
        if not self._started:
            return [self._event("error", code="server_error", message=message, param=None)]
        self._output += [self._item(item, "incomplete") for item in self._open]
        self._open, self._open_calls = [], {}
        self._response = response_object(
            self._request,
            self._response_id,
            self._created_at,
            status="failed",
            output=list(self._output),
            usage=usage_from_chat(self._usage),
            error={"code": "server_error", "message": message},
        )
        return [self._event("response.failed", response=self._response)]

    def _text_delta(self, kind: str, delta: str) -> list[Event]:
        events: list[Event] = []
        if not self._open or self._open[-1].kind != kind:
            events += self._close_all("completed")
            events += self._open_item(kind)
        item = self._open[-1]
        item.text += delta
        event = (
            "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        )
        extra: dict[str, Any] = {"logprobs": []} if kind == "message" else {}
        events.append(
            self._event(
                event,
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                delta=delta,
                **extra,
            )
        )
        return events

    def _tool_call_delta(self, call: dict[str, Any]) -> list[Event]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        events: list[Event] = []
        item = self._open_calls.get(index)
        if item is None:
            if index in self._closed_tool_indexes:
                # Text came between: the call is done for the client and cannot grow.
                return self.error(f"backend sent more of tool call {index} after it was complete")
            if self._open and self._open[-1].kind != "function_call":
                events += self._close_all("completed")  # the text before the calls
            events += self._open_item("function_call", call, index)
            item = self._open_calls[index]
        else:
            if call.get("id") and not item.call_id:
                item.call_id = call["id"]
            if function.get("name") and not item.name:
                item.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.output_index,
                    delta=arguments,
                )
            )
        return events

    def _open_item(
        self, kind: str, call: dict[str, Any] | None = None, tool_index: Any = None
    ) -> list[Event]:
        output_index = len(self._output) + len(self._open)
        if kind == "function_call":
            assert call is not None
            function = call.get("function") or {}
            item = _OpenItem(
                kind,
                output_index,
                item_id(FUNCTION_CALL_PREFIX, self._response_id, output_index),
                tool_index=tool_index,
                call_id=call.get("id") or "",
                name=function.get("name") or "",
            )
            self._open.append(item)
            self._open_calls[tool_index] = item
            return [
                self._event(
                    "response.output_item.added",
                    output_index=output_index,
                    item=self._item(item, "in_progress"),
                )
            ]
        prefix = MESSAGE_PREFIX if kind == "message" else REASONING_PREFIX
        item = _OpenItem(kind, output_index, item_id(prefix, self._response_id, output_index))
        self._open.append(item)
        empty = self._item(item, "in_progress", with_part=False)
        return [
            self._event("response.output_item.added", output_index=output_index, item=empty),
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=output_index,
                content_index=0,
                part=_part(kind, ""),
            ),
        ]

    def _close_all(self, status: str) -> list[Event]:
        """The ``.done`` events of every open item, in output order."""
        events: list[Event] = []
        for item in self._open:
            events += self._close(item, status)
        self._open, self._open_calls = [], {}
        return events

    def _close(self, item: _OpenItem, status: str) -> list[Event]:
        done = self._item(item, status)
        self._output.append(done)
        where = {"item_id": item.id, "output_index": item.output_index}
        events: list[Event]
        if item.kind == "function_call":
            self._closed_tool_indexes.add(item.tool_index)
            events = [
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=done["name"],
                    arguments=item.text,
                )
            ]
        else:
            if item.kind == "message":
                text_done = self._event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=item.text,
                    logprobs=[],
                )
            else:
                text_done = self._event(
                    "response.reasoning_text.done", **where, content_index=0, text=item.text
                )
            events = [
                text_done,
                self._event(
                    "response.content_part.done",
                    **where,
                    content_index=0,
                    part=_part(item.kind, item.text),
                ),
            ]
        events.append(
            self._event("response.output_item.done", output_index=item.output_index, item=done)
        )
        return events

    def _item(self, item: _OpenItem, status: str, *, with_part: bool = True) -> dict[str, Any]:
        if item.kind == "message":
            return message_item(item.id, item.text, status, with_part=with_part)
        if item.kind == "reasoning":
            return reasoning_item(item.id, item.text, status, with_part=with_part)
        call_id = item.call_id or item_id(CALL_ID_PREFIX, self._response_id, item.tool_index or 0)
        return function_call_item(item.id, call_id, item.name, item.text, status)

    def _snapshot(self, status: str) -> dict[str, Any]:
        return response_object(
            self._request,
            self._response_id,
            self._created_at,
            status=status,
            output=[],
            usage=None,
        )

    def _event(self, kind: str, **data: Any) -> Event:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return kind, payload


def _part(kind: str, text: str) -> dict[str, Any]:
    return output_text_part(text) if kind == "message" else reasoning_text_part(text)
