"""Earlier turns of Responses conversations, so ``previous_response_id`` works.

Bounded in bytes, not in entries: each entry holds its whole conversation (every
earlier turn again, so a long conversation costs memory roughly quadratic in its
length), and entries range from a few hundred bytes to many megabytes, so a count
bounded nothing. Nothing survives a restart; an evicted or unknown id is not found.

Each entry is kept as its JSON encoding, made once when it is stored: that bytes
object is immutable (nothing a caller does later can change it, so no defensive deep
copy is needed on the way in), its length is the entry's size, and it is far smaller
than the dicts it came from. ``get`` decodes it into new objects the caller owns. Both
run through msgspec, several times quicker than ``copy.deepcopy`` of the same dicts,
and only for the requests that store or continue a conversation.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from slm_server.translate.responses_request import input_messages
from slm_server.translate.responses_response import response_output_as_chat_messages

DEFAULT_MAX_BYTES = 256 * 1024 * 1024

# Counted for each entry on top of its JSON: the id, the bytes object, the dict slot.
_ENTRY_OVERHEAD = 200

_decode_messages = msgspec.json.Decoder(list[dict[str, Any]]).decode


class ResponseStore:
    """Response id -> the chat messages of its conversation, within ``max_bytes``.

    When full, the least recently used entries go (``get`` and ``put`` both count as
    use), so an active conversation outlives abandoned ones. What goes in and what
    comes out are copies: callers may change them. Not thread-safe; one event loop.

    Each entry has an ``owner`` (the API key's name; None without keys): a conversation
    is found only by its owner, so one key cannot continue, nor read, another's.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[tuple[str | None, str], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        """Whether ``response_id`` is stored without an owner."""
        return (None, response_id) in self._entries

    def get(self, response_id: str, owner: str | None = None) -> list[dict[str, Any]] | None:
        """The conversation ending with ``response_id``'s output, or None if not stored
        (for ``owner``)."""
        entry = (owner, response_id)
        encoded = self._entries.get(entry)
        if encoded is None:
            return None
        self._entries.move_to_end(entry)
        return _decode_messages(encoded)

    def put(
        self, response_id: str, messages: list[dict[str, Any]], owner: str | None = None
    ) -> bool:
        """Store (or replace) the conversation for ``response_id``, evicting the LRU entries.

        False, and nothing kept under that id, when it alone exceeds ``max_bytes``.
        """
        entry = (owner, response_id)
        self._drop(entry)
        encoded = msgspec.json.encode(messages)
        if _size(entry, encoded) > self.max_bytes:
            return False
        self._entries[entry] = encoded
        self.used_bytes += _size(entry, encoded)
        while self.used_bytes > self.max_bytes:
            oldest, dropped = self._entries.popitem(last=False)
            self.used_bytes -= _size(oldest, dropped)
        return True

    def _drop(self, entry: tuple[str | None, str]) -> None:
        encoded = self._entries.pop(entry, None)
        if encoded is not None:
            self.used_bytes -= _size(entry, encoded)

    def record_turn(
        self,
        request: dict[str, Any],
        history: list[dict[str, Any]] | None,
        response: dict[str, Any],
        owner: str | None = None,
    ) -> bool:
        """Store the conversation after ``response``, unless ``request["store"]`` is false.

        ``history`` is what ``previous_response_id`` resolved to (as passed to
        ``responses_to_chat``). The instructions are not stored: OpenAI does not
        carry them over to the next turn. Returns whether anything was stored.
        """
        messages = turn_messages(request, history, response)
        return messages is not None and self.put(str(response["id"]), messages, owner)


def turn_messages(
    request: dict[str, Any], history: list[dict[str, Any]] | None, response: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """The conversation to store after ``response`` (see ``ResponseStore.record_turn``);
    None when ``request["store"]`` is false."""
    if request.get("store") is False:
        return None
    return input_messages(request, history) + response_output_as_chat_messages(response)


def _size(entry: tuple[str | None, str], encoded: bytes) -> int:
    owner, response_id = entry
    return len(encoded) + len(response_id) + len(owner or "") + _ENTRY_OVERHEAD
