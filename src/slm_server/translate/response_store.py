"""Earlier turns of Responses conversations, so ``previous_response_id`` works.

Memory is bounded by a count of responses, not bytes: each entry holds its
whole conversation (every earlier turn again), so a long conversation costs
roughly quadratic memory in its length. With the default of 1,000 entries and
a few-thousand-token context per model that stays in the tens of megabytes.
Nothing survives a restart; an evicted or unknown id is simply not found.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from slm_server.translate.responses_request import input_messages
from slm_server.translate.responses_response import response_output_as_chat_messages

DEFAULT_MAX_RESPONSES = 1000


class ResponseStore:
    """Response id -> the chat messages of its conversation, up to ``max_responses``.

    When full, the least recently used entry goes (``get`` and ``put`` both
    count as use), so an active conversation outlives abandoned ones. Messages
    are copied in and out: callers may change what they pass or receive. Not
    thread-safe; meant for one event loop.
    """

    def __init__(self, max_responses: int = DEFAULT_MAX_RESPONSES) -> None:
        if max_responses < 1:
            raise ValueError("max_responses must be >= 1")
        self._max = max_responses
        self._entries: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    @property
    def capacity(self) -> int:
        """How many responses are kept before the least recently used one goes."""
        return self._max

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        """The conversation ending with ``response_id``'s output, or None if not stored."""
        messages = self._entries.get(response_id)
        if messages is None:
            return None
        self._entries.move_to_end(response_id)
        return copy.deepcopy(messages)

    def put(self, response_id: str, messages: list[dict[str, Any]]) -> None:
        """Store (or replace) the conversation for ``response_id``, evicting the LRU entry."""
        self._entries[response_id] = copy.deepcopy(messages)
        self._entries.move_to_end(response_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def record_turn(
        self,
        request: dict[str, Any],
        history: list[dict[str, Any]] | None,
        response: dict[str, Any],
    ) -> bool:
        """Store the conversation after ``response``, unless ``request["store"]`` is false.

        ``history`` is what ``previous_response_id`` resolved to (as passed to
        ``responses_to_chat``). The instructions are not stored: OpenAI does not
        carry them over to the next turn. Returns whether anything was stored.
        """
        if request.get("store") is False:
            return False
        messages = input_messages(request, history) + response_output_as_chat_messages(response)
        self.put(str(response["id"]), messages)
        return True
