"""Endpoints a backend may lack, answered through its Chat Completions endpoint.

For ``/v1/responses``, ``/v1/messages`` and ``/v1/messages/count_tokens`` the
backend's own endpoint is tried first. A 404, 405 or 422 there has the request
converted to a chat completion, sent, and the answer converted back. Only a
404 or 405 says the route does not exist, and only that is remembered for the
backend (until it restarts); a 422 may be a real validation error of a backend
that has the route (FastAPI answers 422 for a body it rejects), so the next
request tries natively again. A backend whose launch spec says it lacks the
endpoint is converted for at once. Requests that continue a stored response
(``previous_response_id``) are always converted, since only the router holds
that conversation. A converted answer says why in its header, e.g.
``x-slm-converted-from: chat-completions; reason=not-found``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from slm_server.router.anthropic_errors import anthropic_error_payload
from slm_server.router.asgi import (
    ENDED_IN_ERROR,
    JSON_HEADERS,
    Body,
    Headers,
    Send,
    send_response,
)
from slm_server.router.errors import (
    BadGateway,
    InvalidRequest,
    UnsupportedRequestField,
    error_body,
)
from slm_server.router.lifetime import RequestLifetime
from slm_server.router.proxy import (
    SSE_HEADERS,
    EndpointMissing,
    StreamBroken,
    forward,
    open_upstream,
    read_whole,
    refusal_of,
    stream_pieces,
)
from slm_server.router.remote_answers import refused
from slm_server.router.responses_memory import (
    PendingTurn,
    RememberingStream,
    conversation_before,
    json_object,
    native_recorder,
    store_turn,
)
from slm_server.router.routing import Backend, router_changes
from slm_server.stores import ConversationStore
from slm_server.stores.memory import MemoryStore
from slm_server.supervisor import BackendProcess
from slm_server.translate import anthropic_request, anthropic_response
from slm_server.translate.anthropic_stream import MessagesStream
from slm_server.translate.chat_chunks import chunk_error, completion_as_chunks
from slm_server.translate.errors import InvalidField, UnsupportedField
from slm_server.translate.response_store import ResponseStore
from slm_server.translate.responses_request import check_request, responses_to_chat
from slm_server.translate.responses_response import (
    chat_to_response,
)
from slm_server.translate.responses_stream import ResponsesStream
from slm_server.translate.sse import SseParser, SseTooLarge, sse_frame
from slm_server.upstream import UpstreamPool, UpstreamResponse

log = logging.getLogger(__name__)

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
BRIDGED_PATHS = frozenset({RESPONSES, MESSAGES, COUNT_TOKENS})
# Answers to a native try that have the request converted, and why, for the header.
_CONVERT_ON = {404: "not-found", 405: "method-not-allowed", 422: "unprocessable"}
_CONVERT_STATUSES = frozenset(_CONVERT_ON)
_ROUTE_ABSENT = frozenset({404, 405})  # of those, the ones that say the route does not exist
# Why a request was converted without a native try.
_KNOWN_MISSING = "known-missing"  # this process answered 404 or 405 before
_NOT_SERVED = "not-served"  # the backend's kind lacks the endpoint (its launch spec says)
_STORED_CONVERSATION = "stored-conversation"  # previous_response_id: only the router has it


CONVERTED_HEADER = b"x-slm-converted-from"


def converted_header(reason: str) -> tuple[bytes, bytes]:
    """Marks an answer the router converted from the backend's chat completion, and why."""
    return (CONVERTED_HEADER, f"chat-completions; reason={reason}".encode())


Events = list[tuple[str, dict[str, Any]]]


class StreamConverter(Protocol):
    def start(self) -> Events: ...
    def feed(self, chunk: dict[str, Any]) -> Events: ...
    def finish(self) -> Events: ...
    def error(self, message: str) -> Events: ...


class Conversion(Protocol):
    """One request in another dialect, as a chat completion and back."""

    chat: dict[str, Any]

    def whole(self, chat: dict[str, Any]) -> dict[str, Any]: ...
    def stream(self) -> StreamConverter: ...
    def upstream_error(self, status: int, payload: bytes) -> bytes: ...

    async def keep(self) -> None:
        """Store what the answer made (a Responses turn), before its last bytes go out."""
        ...


Keep = Callable[[], Awaitable[None]]


# How long a server elsewhere's 404 for a native endpoint is believed.
REMOTE_LACKING_S = 300.0


class Bridge:
    """Serves the bridged endpoints for every backend; holds the Responses store."""

    def __init__(self, store: ConversationStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore(ResponseStore())
        # (role, path) -> the server that lacked it (a process generation, or a server
        # elsewhere's Remote) and when: see _why_convert.
        self._lacking: dict[tuple[str, str], tuple[object, float]] = {}

    async def handle(
        self,
        pool: UpstreamPool,
        backend: Backend,
        process: BackendProcess | None,
        path: str,
        target: str,
        request: dict[str, Any],
        body: Body,
        headers: Headers,
        send: Send,
        lifetime: RequestLifetime,
        owner: str | None = None,
        refusals: frozenset[int] = frozenset(),
    ) -> None:
        """Answer ``request`` (whose raw, possibly adjusted, bytes are ``body``) on ``path``.

        ``target``: ``path`` with the client's query, for a native try. The caller holds
        the backend's slot, for the native try and the converted request alike. ``owner``:
        the API key's name, whose stored responses alone ``previous_response_id`` finds.
        ``refusals``: answer statuses raised as UpstreamRefusal (see proxy.forward).
        """
        server: object = backend.remote
        if server is None:
            server = process.generation if process is not None else 0
        reason = self._why_convert(backend, process, path, request, server)
        if reason is None:
            # A native answer is stored as it goes out, before its last bytes.
            recorder = (
                native_recorder(request, self.store, owner, send) if path == RESPONSES else None
            )
            try:
                await forward(
                    pool,
                    backend,
                    target,
                    headers,
                    body,
                    recorder.send if recorder is not None else send,
                    lifetime,
                    missing_statuses=_CONVERT_STATUSES,
                    refusals=refusals,
                )
            except EndpointMissing as missing:
                reason = _CONVERT_ON[missing.status]
                if missing.status in _ROUTE_ABSENT:
                    log.info("%s has no %s; converting to chat completions", backend.label, path)
                    self._lacking[(backend.role, path)] = (server, time.monotonic())
                else:
                    log.info(
                        "%s answered %s with %d; converting this request",
                        backend.label,
                        path,
                        missing.status,
                    )
            else:
                return
        conversion = await self._conversion(path, request, owner)
        # What the router adds to chat requests it forwards goes into converted ones too.
        upstream_model = backend.upstream_model(process.upstream_model if process else None)
        chat = conversion.chat
        chat.update(router_changes(backend, "/v1/chat/completions", chat, upstream_model))
        marker = converted_header(reason)
        await _converted(pool, backend, conversion, headers, send, lifetime, marker, refusals)

    def _why_convert(
        self,
        backend: Backend,
        process: BackendProcess | None,
        path: str,
        request: dict[str, Any],
        server: object,
    ) -> str | None:
        """Why ``request`` is converted without trying natively; None: try natively first."""
        if path == RESPONSES and request.get("previous_response_id") is not None:
            return _STORED_CONVERSATION
        if backend.remote is not None:
            declared: frozenset[str] | None = backend.remote.native_endpoints
        else:
            declared = process.native_endpoints if process is not None else None
        if declared is not None and path not in declared:
            return _NOT_SERVED
        # Declared or not, a 404 seen from this very process is believed over the declaration.
        # A server elsewhere is no process the router sees restart (a proxy in front of it
        # may answer 404 while it does): its 404 is believed for a while only.
        lacking = self._lacking.get((backend.role, path))
        if lacking is None or lacking[0] != server:
            return None
        if backend.remote is not None and time.monotonic() - lacking[1] > REMOTE_LACKING_S:
            return None
        return _KNOWN_MISSING

    async def _conversion(
        self, path: str, request: dict[str, Any], owner: str | None
    ) -> Conversion:
        try:
            if path == RESPONSES:
                check_request(request)  # previous_response_id is read before the conversion
                previous = request.get("previous_response_id")
                history = await conversation_before(self.store, previous, owner)
                return _ResponsesConversion(request, history, PendingTurn(self.store), owner)
            if path == MESSAGES:
                return _MessagesConversion(request)
            return _CountTokensConversion(request)
        except UnsupportedField as exc:
            raise UnsupportedRequestField(str(exc), param=exc.param) from None
        except InvalidField as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None


class _ResponsesConversion:
    def __init__(
        self,
        request: dict[str, Any],
        history: list[dict[str, Any]] | None,
        pending: PendingTurn,
        owner: str | None,
    ) -> None:
        self.request = request
        self.pending = pending
        self.owner = owner
        self.history = history
        self.chat = responses_to_chat(request, history)
        self.response_id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def whole(self, chat: dict[str, Any]) -> dict[str, Any]:
        response = chat_to_response(chat, self.request, self.response_id, self.created_at)
        self._remember(response)
        return response

    def stream(self) -> StreamConverter:
        return RememberingStream(
            ResponsesStream(self.request, self.response_id, self.created_at), self._remember
        )

    def upstream_error(self, status: int, payload: bytes) -> bytes:
        return openai_error_payload(status, payload)

    async def keep(self) -> None:
        await self.pending.keep()

    def _remember(self, response: dict[str, Any]) -> None:
        store_turn(self.pending, self.request, self.history, response, self.owner)


class _MessagesConversion:
    def __init__(self, request: dict[str, Any]) -> None:
        self.chat = anthropic_request.messages_to_chat(request)
        self.model = str(request.get("model"))
        self.message_id = f"msg_{uuid.uuid4().hex}"

    def whole(self, chat: dict[str, Any]) -> dict[str, Any]:
        return anthropic_response.chat_to_message(chat, self.model, self.message_id)

    def stream(self) -> StreamConverter:
        return MessagesStream(self.model, self.message_id)

    def upstream_error(self, status: int, payload: bytes) -> bytes:
        return anthropic_error_payload(status, payload)

    async def keep(self) -> None:
        return None  # nothing of a Messages answer is stored


class _CountTokensConversion(_MessagesConversion):
    # Not super().__init__: a count_tokens request has no max_tokens to convert.
    def __init__(self, request: dict[str, Any]) -> None:
        self.chat = anthropic_request.count_tokens_to_chat(request)
        self.model = str(request.get("model"))
        self.message_id = ""

    def whole(self, chat: dict[str, Any]) -> dict[str, Any]:
        return anthropic_request.chat_usage_to_count(chat)


def openai_error_payload(status: int, payload: bytes) -> bytes:
    """A backend's error body as is when it is an OpenAI error envelope, else wrapped in one."""
    parsed = json_object(payload)
    error = parsed.get("error")
    if isinstance(error, dict):
        return payload
    if isinstance(error, str) and error:  # {"error": "..."}, as some servers send
        message = error
    else:
        message = payload.decode("utf-8", errors="replace")[:500] or f"backend error {status}"
    return error_body(status, message, code="backend_error")


async def _converted(
    pool: UpstreamPool,
    backend: Backend,
    conversion: Conversion,
    headers: Headers,
    send: Send,
    lifetime: RequestLifetime,
    marker: tuple[bytes, bytes],
    refusals: frozenset[int],
) -> None:
    body = json.dumps(conversion.chat).encode()
    stopwatch = lifetime.stopwatch
    stopwatch.pause()
    try:
        response = await open_upstream(
            pool, backend, "/v1/chat/completions", headers, body, lifetime
        )
    except BaseException:  # the upstream's wait is not the router's time, though it failed
        stopwatch.resume()
        raise
    completed = False
    try:
        if response.status != 200:
            payload = await read_whole(response, backend, lifetime)
            stopwatch.resume()
            refusal = refused(backend, "/v1/chat/completions", response.status, payload)
            error = (
                b"" if refusal is not None else conversion.upstream_error(response.status, payload)
            )
            if response.status in refusals:
                relayed = None if refusal is not None else ([*JSON_HEADERS, marker], error)
                raise refusal_of(response, payload, relayed)
            if refusal is not None:
                raise refusal
            answer_headers = [*JSON_HEADERS, marker, *stopwatch.headers()]
            await send_response(send, response.status, error, answer_headers)
        elif conversion.chat.get("stream"):
            converter = conversion.stream()
            if response.content_type == "text/event-stream":
                stopwatch.resume()
                head = [marker, *stopwatch.headers()]
                keep = conversion.keep
                await _relay_converted_stream(response, send, backend, converter, keep, head)
            else:  # the backend ignored `stream: true`: its whole answer, as the stream's events
                answer = json_object(await read_whole(response, backend, lifetime))
                stopwatch.resume()
                await _send_start(send, [marker, *stopwatch.headers()])
                events = converter.start() + _whole_as_events(answer, converter, backend)
                await conversion.keep()
                await _send_events(send, events, last=True)
        elif response.content_type == "text/event-stream":
            stopwatch.resume()
            raise BadGateway(
                f"{backend.label} answered a request that did not ask to stream with an event "
                "stream"
            )
        else:
            chat = json_object(await read_whole(response, backend, lifetime))
            stopwatch.resume()
            whole = json.dumps(_converted_whole(conversion, chat, backend)).encode()
            await conversion.keep()
            await send_response(send, 200, whole, [*JSON_HEADERS, marker, *stopwatch.headers()])
        completed = True
    finally:
        if completed:
            response.release()
        else:
            response.close()  # the backend sees the client leave


def _converted_whole(
    conversion: Conversion, chat: dict[str, Any], backend: Backend
) -> dict[str, Any]:
    """The client's answer for the backend's chat completion; BadGateway if it is none."""
    if completion_as_chunks(chat) is None:
        raise BadGateway(f"{backend.label} answered with JSON that is not a chat completion")
    try:
        return conversion.whole(chat)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        # The converters trust the shape of a completion's fields; this one broke it
        # (e.g. tool_calls as an object). The backend's answer is at fault, not the request.
        log.warning("%s: unreadable chat completion", backend.label, exc_info=True)
        raise BadGateway(f"{backend.label} answered a chat completion it could not read") from None


async def _send_start(send: Send, extra: Headers) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *SSE_HEADERS, *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _relay_converted_stream(
    response: UpstreamResponse,
    send: Send,
    backend: Backend,
    converter: StreamConverter,
    keep: Keep,
    extra: Headers,
) -> None:
    """``keep``: stores what the converter remembered, before the stream's last event."""
    await _send_start(send, extra)
    await _send_events(send, converter.start())
    parser = SseParser()
    # The status is out: from here on every way out ends the stream with its own last event.
    try:
        async with contextlib.aclosing(stream_pieces(response, backend)) as pieces:
            async for piece in pieces:
                for event in parser.feed(piece):
                    if event.data.strip() == "[DONE]":
                        final = converter.finish()
                        await keep()
                        await _send_events(send, final, last=True)
                        return
                    chunk = json_object(event.data)
                    message = chunk_error(chunk)
                    if message is not None:
                        await _send_events(send, converter.error(message), last=True)
                        return
                    await _send_events(send, converter.feed(chunk))
        final = converter.finish()  # the backend closed without [DONE]: what came is whole
        await keep()
        await _send_events(send, final, last=True)
        return
    except StreamBroken as broken:
        final = converter.error(str(broken))
    except SseTooLarge as exc:  # the response has started: the error can only go in-band
        log.warning("%s: %s; ending the stream", backend.label, exc)
        final = converter.error(f"{backend.label} sent a broken stream: {exc}")
    except Exception:  # a bug converting: the client still gets a well-formed end
        log.exception("%s: converting the stream failed", backend.label)
        final = converter.error("internal error in the router converting the stream (logged)")
    await _send_events(send, final, last=True, failed=True)


def _whole_as_events(whole: dict[str, Any], converter: StreamConverter, backend: Backend) -> Events:
    """The events for a backend's whole (non-streamed) JSON answer to a streamed request."""
    message = chunk_error(whole)
    if message is not None:
        return converter.error(message)
    chunks = completion_as_chunks(whole)
    if chunks is None:
        return converter.error(
            f"{backend.label} answered a streamed request with JSON that is not a chat completion"
        )
    events: Events = []
    for chunk in chunks:
        events += converter.feed(chunk)
    return events + converter.finish()


async def _send_events(
    send: Send, events: Events, *, last: bool = False, failed: bool = False
) -> None:
    """``failed``: the router broke the stream off with an error (see ENDED_IN_ERROR)."""
    if events or last:
        body = b"".join(sse_frame(name, data) for name, data in events)
        message = {"type": "http.response.body", "body": body, "more_body": not last}
        if failed:
            message[ENDED_IN_ERROR] = True
        await send(message)
