"""What the Responses store keeps of /v1/responses answers, native and converted.

Storing is a side effect of answering: the client's answer must never depend on
it. A turn the store cannot keep is logged and the answer goes out all the same,
including a converted stream's final event (without which the client would not
know the response had completed).

The turn is worked out as the answer is made, into a ``PendingTurn``, and stored
(``keep``, asynchronous: the store may be Redis) before the answer's last bytes go
out (a stream's: its final event), so that the client's next turn finds it, even on
another router.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from slm_server.router.asgi import Message, Send
from slm_server.router.errors import ResponseStoreUnavailable, UnknownResponse
from slm_server.stores import ConversationStore, StoreUnreachable
from slm_server.translate.errors import UnsupportedField
from slm_server.translate.response_store import turn_messages
from slm_server.translate.responses_stream import ResponsesStream
from slm_server.translate.sse import MAX_EVENT_BYTES, SseParser, SseTooLarge

log = logging.getLogger(__name__)

Events = list[tuple[str, dict[str, Any]]]


class TurnSink(Protocol):
    """Takes the turn an answer makes (a ``ResponseStore``, or a ``PendingTurn``)."""

    def record_turn(
        self,
        request: dict[str, Any],
        history: list[dict[str, Any]] | None,
        response: dict[str, Any],
        owner: str | None = None,
    ) -> bool: ...


class PendingTurn:
    """One answer's turn, held from when the answer is made until ``keep`` stores it."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store
        self.turn: tuple[str, list[dict[str, Any]], str | None] | None = None

    def record_turn(
        self,
        request: dict[str, Any],
        history: list[dict[str, Any]] | None,
        response: dict[str, Any],
        owner: str | None = None,
    ) -> bool:
        messages = turn_messages(request, history, response)
        if messages is None:
            return False
        self.turn = (str(response["id"]), messages, owner)
        return True

    async def keep(self) -> None:
        """Store the turn, if any; a failure is logged, never raised."""
        if self.turn is None:
            return
        (response_id, messages, owner), self.turn = self.turn, None
        try:
            await self.store.put(response_id, messages, owner)
        except StoreUnreachable:  # the store said so once for the whole outage
            log.debug("response %s not stored: the store is unreachable", response_id)
        except Exception:  # any: an answer that is otherwise fine must still go out
            log.warning("response %s not stored", response_id, exc_info=True)


async def conversation_before(
    store: ConversationStore, previous: object, owner: str | None
) -> list[dict[str, Any]] | None:
    """The conversation ``previous`` (a request's ``previous_response_id``) continues, as
    ``owner`` stored it; None when there is no ``previous``."""
    if previous is None:
        return None
    try:
        history = await store.get(str(previous), owner)
    except StoreUnreachable as exc:
        raise ResponseStoreUnavailable(
            f"previous response '{previous}' cannot be looked up: {exc}",
            param="previous_response_id",
        ) from None
    if history is None:
        # Another key's response is as unknown as one never made: nothing tells it apart.
        raise UnknownResponse(
            f"previous response '{previous}' is unknown or expired ({store.forgets})",
            param="previous_response_id",
        )
    return history


def store_turn(
    store: TurnSink,
    request: dict[str, Any],
    history: list[dict[str, Any]] | None,
    response: dict[str, Any],
    owner: str | None,
) -> None:
    """Store the turn ending with ``response`` for ``owner`` (the API key's name); a
    failure is logged, never raised."""
    try:
        store.record_turn(request, history, response, owner)
    except Exception:  # any: an answer that is otherwise fine must still go out
        log.warning("response %s not stored", response.get("id"), exc_info=True)


class RememberingStream:
    """A converted Responses stream that stores its final response as it goes out."""

    def __init__(self, inner: ResponsesStream, remember: Callable[[dict[str, Any]], None]):
        self.inner = inner
        self.remember = remember

    def start(self) -> Events:
        return self.inner.start()

    def feed(self, chunk: dict[str, Any]) -> Events:
        return self.inner.feed(chunk)

    def finish(self) -> Events:
        events = self.inner.finish()  # built whole before anything is stored
        for name, data in events:
            if name in ("response.completed", "response.incomplete"):
                self.remember(data["response"])
        return events

    def error(self, message: str) -> Events:
        return self.inner.error(message)


def native_recorder(
    request: dict[str, Any], store: ConversationStore, owner: str | None, send: Send
) -> NativeRecorder | None:
    """A recorder for a native answer to ``request``, sent with ``send``, to store for
    ``owner`` (the API key's name); None when it asks not to be stored."""
    if request.get("store") is False:
        return None
    return NativeRecorder(request, PendingTurn(store), owner, send)


class NativeRecorder:
    """Watches a native /v1/responses answer go out, to store it for previous_response_id.

    Its ``send`` stands in for the client's: every message is passed on, but the one that
    completes the answer (the whole body, or the piece of a stream holding its
    response.completed event) only once the turn is stored, so that the client's next turn
    finds it at once, on this router or another sharing the store. It keeps at most
    ``MAX_EVENT_BYTES`` of the answer (the whole body, or one event of a stream): a larger
    answer is relayed all the same, only not stored.
    """

    def __init__(
        self, request: dict[str, Any], pending: PendingTurn, owner: str | None, send: Send
    ) -> None:
        self.request = request
        self.pending = pending
        self.owner = owner
        self.client_send = send
        self.streamed = bool(request.get("stream"))
        self.parser = SseParser(MAX_EVENT_BYTES)
        self.whole = bytearray()
        self.response: dict[str, Any] | None = None
        self.keeping = True

    async def send(self, message: Message) -> None:
        if self.keeping:
            if message["type"] == "http.response.start" and message["status"] != 200:
                self.keeping = False  # an error: nothing to store
            elif message["type"] == "http.response.body":
                self._feed(message.get("body", b""))
                last = not message.get("more_body", False)
                if self.keeping and (last or self.response is not None):
                    self.keeping = False  # stored once, however many messages follow
                    self._record()
                    await self.pending.keep()
        await self.client_send(message)

    def _feed(self, piece: bytes) -> None:
        if not self.streamed:
            if len(self.whole) + len(piece) > MAX_EVENT_BYTES:
                self._give_up()
            else:
                self.whole += piece
            return
        try:
            events = self.parser.feed(piece)
        except SseTooLarge:
            self._give_up()
            return
        for event in events:
            if event.event in ("response.completed", "response.incomplete"):
                self.response = json_object(event.data).get("response")

    def _give_up(self) -> None:
        log.info("native response over %d bytes: relayed, not stored", MAX_EVENT_BYTES)
        self.keeping = False
        self.whole = bytearray()
        self.response = None

    def _record(self) -> None:
        response = self.response if self.streamed else json_object(bytes(self.whole))
        if not isinstance(response, dict) or "id" not in response:
            return
        try:  # no history: requests continuing a conversation are never served natively
            self.pending.record_turn(self.request, None, response, self.owner)
        except (UnsupportedField, KeyError, TypeError, ValueError):
            log.debug("native response %s not stored: not convertible", response.get("id"))


def json_object(text: str | bytes) -> dict[str, Any]:
    """``text`` parsed when it is a JSON object, else an empty dict."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
