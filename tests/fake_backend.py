#!/usr/bin/env python3
"""A fake OpenAI-compatible model server (in the style of llama.cpp's llama-server).

Standalone script used by the test suite as a real subprocess::

    python tests/fake_backend.py --port 0 [--chunks 5] [--chunk-delay 0.1] ...

Once listening it prints exactly one line ``READY <port>`` to stdout (the real
bound port, so ``--port 0`` works) and then prints nothing else to stdout.

Model endpoints (all answers are deterministic):

* ``GET  /health``                   200 ``{"status":"ok"}`` or 503 while loading
* ``GET  /v1/models``                the served model (``--model-name``)
* ``POST /v1/chat/completions``      content ``"echo: <last user text>"``; streamed:
                                     role delta, ``tok0 `` ... ``tok{N-1} ``, stop,
                                     [usage], ``[DONE]``. With ``tools`` (and no
                                     tool result last): a call of the first tool
                                     with ``{"text": <last user text>}``, streamed
                                     in N argument pieces; after a tool result:
                                     ``"tool said: <result>"``
* ``POST /completion``               llama-server's own: one token (what its check asks for)
* ``POST /v1/completions``           text ``"echo: <prompt>"``; streamed like chat
* ``POST /v1/embeddings``            hash-derived unit vectors (float or base64)
* ``POST /v1/rerank`` (``/rerank``, ``/v1/reranking``)  llama.cpp rerank format,
                                     score = share of query words found in the doc
* ``POST /v1/responses``             minimal Responses API object (404 if
                                     ``no_responses``)
* ``POST /v1/images/generations``    one image: ``b64_json`` of ``"<model>: <prompt>"``
* ``POST /v1/images/edits``          multipart; one image: ``b64_json`` of
                                     ``"<model>: <prompt>: <sha256 of the image>"``
* ``POST /v1/audio/transcriptions``  multipart; ``text`` naming the model, the file's
                                     size and sha256

Test hooks:

* ``--prefix /openai``: every route is served under that path too, as behind a proxy.
* ``--tls-cert FILE --tls-key FILE``: HTTPS instead of HTTP.

* ``--record-signals FILE``: the name of each SIGTERM, SIGINT, SIGQUIT or SIGHUP it
  gets is appended to FILE (one line each); then it exits, except on a SIGTERM with
  ``--ignore-sigterm``.

* ``GET  /_fake/last_request``  last recorded request (everything except
  ``/health`` and ``/_fake/*``): method, path, query, raw_query (as sent),
  headers (lower-case names; the last of repeated ones), header_list (every
  ``[name, value]`` in order), body (raw text); ``null`` before the first one.
* ``GET  /_fake/stats``         requests, in_flight, max_in_flight, cancelled,
  completed (same set of requests).
* ``POST /_fake/say``           JSON ``{"lines": [...]}``: writes each line to stderr
  (the output a supervisor logs), flushed; answers ``{"written": N}`` once written.
  ``--log-requests`` writes ``request N: METHOD PATH`` there for each request too.
* ``GET  /_fake/control``       current switches.
* ``POST /_fake/control``       JSON object with any of the switches below; unknown
  keys are a 400.  ``reset: true`` first restores the startup values,
  ``reset_stats: true`` zeroes the counters and forgets the last request.
  Answers with the resulting switches.

Switches (startup flag / control key): ``--fail-status`` / ``fail_status``,
``--hang`` / ``hang``, ``--die-mid-stream`` / ``die_mid_stream``,
``--chunk-delay`` / ``chunk_delay``, ``--chunks`` / ``chunks``,
``--loading`` / ``loading``, ``--response-delay`` / ``response_delay``,
``--no-responses`` / ``no_responses``; control only: ``fail_text`` (with
``fail_status``: that status answers this text/plain body, as a bare web server
would), ``responses_status``
(/v1/responses answers it), ``refusal_delay`` (seconds before /v1/responses
refuses), ``stream_error`` (a string: streams end with
``{"error": "<it>"}`` after their content, no ``[DONE]``), ``interleave_tools``
(a streamed tool call comes with a second one, their pieces interleaved:
index 0, 1, 0, 1 ...), ``ignore_stream`` (chat completions answer plain JSON even
when asked to stream), ``force_stream`` (chat completions stream even when not
asked to), ``hold_streams`` (a stream stops after its first event until the switch is turned
off again: a test holds it open for exactly as long as it needs), ``messages``
(native ``/v1/messages`` and
``/v1/messages/count_tokens``; off: 404 as without the routes), ``chat_body``
(any JSON: chat completions answer it as is, status 200, whatever was asked).
``fail_status``, ``hang`` and ``response_delay`` apply to the POST model endpoints
(not ``/v1/models``, ``/health`` or ``/_fake``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import email.policy
import hashlib
import json
import math
import os
import re
import signal
import ssl
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WORD_RE = re.compile(r"\w+")


@dataclasses.dataclass
class Config:
    """Runtime switches; every field is also a key of ``POST /_fake/control``."""

    fail_status: int | None = None
    fail_text: str | None = None  # fail_status answers this as text/plain, not a JSON error
    hang: bool = False
    die_mid_stream: int | None = None
    chunk_delay: float = 0.0
    chunks: int = 5
    loading: bool = False
    response_delay: float = 0.0
    no_responses: bool = False
    responses_status: int | None = None  # /v1/responses answers this error status
    refusal_delay: float = 0.0  # seconds before /v1/responses refuses (no_responses, status)
    stream_error: str | None = None
    interleave_tools: bool = False
    ignore_stream: bool = False
    force_stream: bool = False  # chat completions stream even when not asked to
    hold_streams: bool = False  # streams wait after their first event until it is off
    messages: bool = False
    chat_body: Any = None


# control key -> (accepted JSON types, nullable)
_CONTROL_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "fail_status": ((int,), True),
    "fail_text": ((str,), True),
    "hang": ((bool,), False),
    "die_mid_stream": ((int,), True),
    "chunk_delay": ((int, float), False),
    "chunks": ((int,), False),
    "loading": ((bool,), False),
    "response_delay": ((int, float), False),
    "no_responses": ((bool,), False),
    "responses_status": ((int,), True),
    "refusal_delay": ((int, float), False),
    "stream_error": ((str,), True),
    "interleave_tools": ((bool,), False),
    "ignore_stream": ((bool,), False),
    "force_stream": ((bool,), False),
    "hold_streams": ((bool,), False),
    "messages": ((bool,), False),
    "chat_body": ((object,), True),
}


@dataclasses.dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0
    completed: int = 0


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _count_tokens(text: str) -> int:
    return len(_words(text))


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _error_body(message: str, type_: str, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json_error(status: int, message: str, type_: str, code: str | int | None) -> web.Response:
    return web.json_response(_error_body(message, type_, code), status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps(_error_body(message, "invalid_request_error", None)),
        content_type="application/json",
    )


def _text_of(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def _tool_to_call(body: dict[str, Any]) -> str | None:
    """The function the fake calls: the first tool offered, unless a tool just answered."""
    tools = body.get("tools")
    messages = body.get("messages") or [{}]
    if not tools or body.get("tool_choice") == "none" or messages[-1].get("role") == "tool":
        return None
    function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
    name = function.get("name")
    return name if isinstance(name, str) else None


def _reply_to(messages: list[Any]) -> str:
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        return f"tool said: {_text_of(last.get('content'))}"
    return f"echo: {_last_user_text(messages)}"


def _last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return _text_of(item.get("content"))
    return ""


def _all_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    return " ".join(_text_of(i.get("content")) for i in items if isinstance(i, dict))


def embedding_for(text: str, dim: int) -> list[float]:
    """Deterministic unit vector derived from SHA-256 of the text."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b / 127.5) - 1.0 for b in digest)
        counter += 1
    vec = values[:dim]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def rerank_score(query: str, document: str) -> float:
    """Share of distinct query words that occur in the document (0..1)."""
    q = set(_words(query))
    if not q:
        return 0.0
    return len(q & set(_words(document))) / len(q)


class FakeServer:
    def __init__(
        self,
        defaults: Config,
        model_name: str,
        embedding_dim: int,
        loading_seconds: float,
        health: bool = True,
        log_requests: bool = False,
    ) -> None:
        self.health_routes = health
        self.log_requests = log_requests
        self.defaults = defaults
        self.config = dataclasses.replace(defaults)
        self.streams_released = asyncio.Event()  # set while hold_streams is off
        self.streams_released.set()
        self.model_name = model_name
        self.embedding_dim = embedding_dim
        self.loading_until = time.monotonic() + loading_seconds
        self.stats = Stats()
        self.last_request: dict[str, Any] | None = None

    # ------------------------------------------------------------------ app

    def make_app(self, tracked: bool = True) -> web.Application:
        """``tracked`` False: for a sub-application, whose parent's middleware tracks it."""
        middlewares = [self.track] if tracked else []
        app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
        if self.health_routes:  # without: like llama_cpp.server, which has /v1/models only
            app.router.add_get("/health", self.health)
            app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/completions", self.completions)
        app.router.add_post("/completion", self.native_completion)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/embeddings", self.embeddings)
        for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking"):
            app.router.add_post(path, self.rerank)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_post("/v1/images/generations", self.image_generation)
        app.router.add_post("/v1/images/edits", self.image_edit)
        app.router.add_post("/v1/audio/transcriptions", self.transcription)
        app.router.add_get("/_fake/last_request", self.fake_last_request)
        app.router.add_get("/_fake/stats", self.fake_stats)
        app.router.add_get("/_fake/control", self.fake_get_control)
        app.router.add_post("/_fake/control", self.fake_control)
        app.router.add_post("/_fake/say", self.fake_say)
        return app

    async def fake_say(self, request: web.Request) -> web.Response:
        lines = (await self.read_json(request)).get("lines")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise _bad_request('expected {"lines": [strings]}')
        # Blocking, as a real server's logging is: a full pipe stalls this server.
        sys.stderr.write("".join(line + "\n" for line in lines))
        sys.stderr.flush()
        return web.json_response({"written": len(lines)})

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_fake") or request.path in ("/health", "/v1/health"):
            return await handler(request)
        body = await request.read()  # cached: handlers can still read it
        self.last_request = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": [[k.lower(), v] for k, v in request.headers.items()],
            "raw_query": request.rel_url.raw_query_string,
            "body": body.decode("utf-8", errors="replace"),
        }
        # Always go through self.stats: reset_stats may swap the object meanwhile.
        self.stats.requests += 1
        if self.log_requests:
            sys.stderr.write(f"request {self.stats.requests}: {request.method} {request.path}\n")
            sys.stderr.flush()
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            resp = await handler(request)
        except (asyncio.CancelledError, ConnectionError):
            self.stats.cancelled += 1
            raise
        except web.HTTPException:
            self.stats.completed += 1
            raise
        else:
            if request.get("client_gone"):
                self.stats.cancelled += 1
            else:
                self.stats.completed += 1
            return resp
        finally:
            self.stats.in_flight -= 1

    # ------------------------------------------------------------- helpers

    def is_loading(self) -> bool:
        return self.config.loading or time.monotonic() < self.loading_until

    async def read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.text())
        except ValueError as exc:
            raise _bad_request(f"invalid JSON body: {exc}") from exc
        if not isinstance(data, dict):
            raise _bad_request("request body must be a JSON object")
        return data

    async def gate(self, *, streamed: bool = False) -> web.Response | None:
        """Apply fail_status / hang / response_delay; a response means: answer it."""
        cfg = self.config
        if cfg.fail_status and cfg.fail_text is not None:
            return web.Response(status=cfg.fail_status, text=cfg.fail_text)
        if cfg.fail_status:
            type_ = "invalid_request_error" if 400 <= cfg.fail_status < 500 else "server_error"
            return _json_error(cfg.fail_status, "fake failure", type_, "fake_error")
        if cfg.hang:
            await asyncio.Event().wait()  # until the client goes away (cancellation)
        if not streamed and cfg.response_delay > 0:
            await asyncio.sleep(cfg.response_delay)
        return None

    def model_of(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.model_name

    async def sse(
        self,
        request: web.Request,
        head: list[dict[str, Any]],
        content_chunk: Callable[[int], dict[str, Any]],
        tail: list[dict[str, Any]],
        count: int | None = None,
    ) -> web.StreamResponse:
        """Write ``head`` events, ``count`` (default ``chunks``) content events, ``tail``, [DONE].

        Every event is a separate write (flushed to the socket), with
        ``chunk_delay`` seconds between consecutive events.
        """
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        first = True

        async def send(payload: str) -> None:
            nonlocal first
            if not first and self.config.hold_streams:
                await self.streams_released.wait()
            if not first and self.config.chunk_delay > 0:
                await asyncio.sleep(self.config.chunk_delay)
            first = False
            await resp.write(f"data: {payload}\n\n".encode())

        def maybe_die(written: int) -> None:
            if self.config.die_mid_stream is not None and written >= self.config.die_mid_stream:
                os._exit(1)

        try:
            await resp.prepare(request)
            for event in head:
                await send(json.dumps(event))
            written = 0
            for i in range(self.config.chunks if count is None else count):
                maybe_die(written)
                await send(json.dumps(content_chunk(i)))
                written += 1
            maybe_die(written)
            if self.config.stream_error is not None:
                await send(json.dumps({"error": self.config.stream_error}))
                await resp.write_eof()
                return resp
            for event in tail:
                await send(json.dumps(event))
            await send("[DONE]")
            await resp.write_eof()
        except ConnectionError:
            # The client went away while we were writing.
            request["client_gone"] = True
        return resp

    def stream_text(self, i: int) -> str:
        return f"tok{i} "

    # ----------------------------------------------------------- endpoints

    async def health(self, request: web.Request) -> web.Response:
        if self.is_loading():
            return web.json_response(
                {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}},
                status=503,
            )
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "fake_backend",
                    }
                ],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise _bad_request("'messages' must be a list")
        asked = bool(body.get("stream")) or self.config.force_stream
        stream = asked and not self.config.ignore_stream
        if (early := await self.gate(streamed=stream)) is not None:
            return early
        if self.config.chat_body is not None:
            return web.json_response(self.config.chat_body)
        model = self.model_of(body)
        cid = _new_id("chatcmpl-")
        created = int(time.time())
        prompt_tokens = _count_tokens(_all_text(messages))

        tool = _tool_to_call(body)
        if tool is not None:
            arguments = json.dumps({"text": _last_user_text(messages)})
            return await self.tool_call(request, body, cid, created, model, tool, arguments, stream)
        if not stream:
            content = _reply_to(messages)
            completion_tokens = _count_tokens(content)
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        n = self.config.chunks
        tail = [chunk({}, "stop")]
        if _include_usage(body):
            tail.append(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fake",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": n,
                        "total_tokens": prompt_tokens + n,
                    },
                }
            )
        return await self.sse(
            request,
            [chunk({"role": "assistant", "content": ""}, None)],
            lambda i: chunk({"content": self.stream_text(i)}, None),
            tail,
        )

    async def tool_call(
        self,
        request: web.Request,
        body: dict[str, Any],
        cid: str,
        created: int,
        model: str,
        tool: str,
        arguments: str,
        stream: bool,
    ) -> web.StreamResponse:
        """Call ``tool`` with ``arguments``; streamed, the arguments come in ``chunks`` pieces."""
        call_id = _new_id("call_")
        prompt_tokens = _count_tokens(_all_text(body.get("messages")))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 8}
        usage["total_tokens"] = prompt_tokens + 8

        def call(arguments: str) -> dict[str, Any]:
            function = {"name": tool, "arguments": arguments}
            return {"id": call_id, "type": "function", "function": function}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": [call(arguments)]}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        if self.config.interleave_tools:
            return await self.interleaved_tool_calls(request, body, chunk, call, arguments, usage)
        n = max(self.config.chunks, 1)
        pieces = _split(arguments, n)
        head = [
            chunk(
                {"role": "assistant", "content": None, "tool_calls": [{**call(""), "index": 0}]},
                None,
            )
        ]
        tail = [chunk({}, "tool_calls")]
        if _include_usage(body):
            tail.append({**chunk({}, None), "choices": [], "usage": usage})
        return await self.sse(
            request,
            head,
            lambda i: chunk(
                {"tool_calls": [{"index": 0, "function": {"arguments": pieces[i]}}]}, None
            ),
            tail,
        )

    async def native_completion(self, request: web.Request) -> web.Response:
        """llama-server's own endpoint, as far as its check asks: one token."""
        await self.read_json(request)
        return web.json_response({"content": "echo", "tokens_predicted": 1})

    async def interleaved_tool_calls(
        self,
        request: web.Request,
        body: dict[str, Any],
        chunk: Callable[[dict[str, Any], str | None], dict[str, Any]],
        call: Callable[[str], dict[str, Any]],
        arguments: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        """Two calls of the tool (the second with ``{"text": "again"}``), pieces alternating."""
        n = max(self.config.chunks, 2)
        first, second = call(""), {**call(""), "id": _new_id("call_")}
        pieces = [_split(arguments, n - n // 2), _split(json.dumps({"text": "again"}), n // 2)]
        head = [
            chunk(
                {"role": "assistant", "content": None, "tool_calls": [{**first, "index": 0}]}, None
            ),
            chunk({"tool_calls": [{**second, "index": 1}]}, None),
        ]
        tail = [chunk({}, "tool_calls")]
        if _include_usage(body):
            tail.append({**chunk({}, None), "choices": [], "usage": usage})

        def piece(i: int) -> dict[str, Any]:
            which = i % 2
            function = {"arguments": pieces[which][i // 2]}
            return chunk({"tool_calls": [{"index": which, "function": function}]}, None)

        return await self.sse(request, head, piece, tail, count=n)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            raise _bad_request("'prompt' must be a string or a list of strings")
        stream = bool(body.get("stream"))
        if (early := await self.gate(streamed=stream)) is not None:
            return early
        model = self.model_of(body)
        cid = _new_id("cmpl-")
        created = int(time.time())
        prompt_tokens = _count_tokens(prompt)

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }

        if not stream:
            text = f"echo: {prompt}"
            completion_tokens = _count_tokens(text)
            result = chunk(text, "stop")
            result["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            return web.json_response(result)

        n = self.config.chunks
        tail = [chunk("", "stop")]
        if _include_usage(body):
            usage_chunk = chunk("", None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            }
            tail.append(usage_chunk)
        return await self.sse(request, [], lambda i: chunk(self.stream_text(i), None), tail)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        raw = body.get("input")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        elif isinstance(raw, list) and raw:  # token ids / lists of token ids
            inputs = [json.dumps(x) for x in raw]
        else:
            raise _bad_request("'input' must be a string or a non-empty list of strings")
        if (early := await self.gate()) is not None:
            return early
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            vec = embedding_for(text, self.embedding_dim)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
                if as_base64
                else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(_count_tokens(t) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model_of(body),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        query = body.get("query")
        documents = body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            raise _bad_request("'query' must be a string and 'documents' a list")
        if (early := await self.gate()) is not None:
            return early
        texts = [d if isinstance(d, str) else _text_of([d]) for d in documents]
        results: list[dict[str, Any]] = [
            {"index": i, "relevance_score": rerank_score(query, text)}
            for i, text in enumerate(texts)
        ]
        results.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        top_n = body.get("top_n")
        if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n >= 0:
            results = results[:top_n]
        if body.get("return_documents") or body.get("return_text"):
            for r in results:
                r["document"] = {"text": texts[r["index"]]}
        tokens = _count_tokens(query) * len(texts) + sum(_count_tokens(t) for t in texts)
        return web.json_response(
            {
                "model": self.model_of(body),
                "object": "list",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": results,
            }
        )

    async def responses(self, request: web.Request) -> web.Response:
        if self.config.no_responses or self.config.responses_status is not None:
            await asyncio.sleep(self.config.refusal_delay)
        if self.config.no_responses:
            return _json_error(404, "File Not Found", "not_found_error", 404)
        if self.config.responses_status is not None:
            status = self.config.responses_status
            return _json_error(status, "fake refusal", "invalid_request_error", status)
        body = await self.read_json(request)
        if body.get("stream"):
            raise _bad_request("the fake backend does not stream the Responses API")
        if (early := await self.gate()) is not None:
            return early
        raw = body.get("input")
        text = f"echo: {_last_user_text(raw)}"
        input_tokens = _count_tokens(_all_text(raw)) + _count_tokens(
            str(body.get("instructions") or "")
        )
        output_tokens = _count_tokens(text)
        return web.json_response(
            {
                "id": _new_id("resp_"),
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": self.model_of(body),
                "output": [
                    {
                        "type": "message",
                        "id": _new_id("msg_"),
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                },
                "error": None,
                "incomplete_details": None,
                "instructions": body.get("instructions"),
                "metadata": {},
                "parallel_tool_calls": True,
                "temperature": body.get("temperature", 1.0),
                "top_p": body.get("top_p", 1.0),
                "tool_choice": "auto",
                "tools": [],
            }
        )

    async def messages(self, request: web.Request) -> web.Response:
        if not self.config.messages:
            raise web.HTTPNotFound()  # as without the route
        body = await self.read_json(request)
        if body.get("stream"):
            raise _bad_request("the fake backend does not stream the Messages API")
        if (early := await self.gate()) is not None:
            return early
        text = f"echo: {_last_user_text(body.get('messages'))}"
        return web.json_response(
            {
                "id": _new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": self.model_of(body),
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": _count_tokens(text)},
            }
        )

    async def count_tokens(self, request: web.Request) -> web.Response:
        if not self.config.messages:
            raise web.HTTPNotFound()
        body = await self.read_json(request)
        return web.json_response({"input_tokens": _count_tokens(_all_text(body.get("messages")))})

    async def image_generation(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        if (early := await self.gate()) is not None:
            return early
        picture = f"{self.model_of(body)}: {body.get('prompt', '')}"
        return _images_response(picture.encode())

    async def image_edit(self, request: web.Request) -> web.Response:
        form = await _form(request, "image")
        if (early := await self.gate()) is not None:
            return early
        digest = hashlib.sha256(form["image"]).hexdigest()
        picture = f"{_text(form, 'model')}: {_text(form, 'prompt')}: {digest}"
        return _images_response(picture.encode())

    async def transcription(self, request: web.Request) -> web.Response:
        form = await _form(request, "file")
        if (early := await self.gate()) is not None:
            return early
        data = form["file"]
        digest = hashlib.sha256(data).hexdigest()
        text = f"{_text(form, 'model')} heard {len(data)} bytes, sha256 {digest}"
        return web.json_response({"text": text})

    # ------------------------------------------------------------ /_fake

    async def fake_last_request(self, request: web.Request) -> web.Response:
        return web.json_response(self.last_request)

    async def fake_stats(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.stats))

    def control_snapshot(self) -> dict[str, Any]:
        snap = dataclasses.asdict(self.config)
        snap["loading"] = self.is_loading()
        return snap

    async def fake_get_control(self, request: web.Request) -> web.Response:
        return web.json_response(self.control_snapshot())

    async def fake_control(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        unknown = set(body) - set(_CONTROL_TYPES) - {"reset", "reset_stats"}
        if unknown:
            raise _bad_request(f"unknown control keys: {sorted(unknown)}")
        for key, value in body.items():
            if key in ("reset", "reset_stats"):
                if not isinstance(value, bool):
                    raise _bad_request(f"{key!r} must be a boolean")
                continue
            types, nullable = _CONTROL_TYPES[key]
            ok = (value is None and nullable) or (
                isinstance(value, types) and (bool in types or not isinstance(value, bool))
            )
            if not ok:
                raise _bad_request(f"bad value for {key!r}: {value!r}")
        if body.get("reset"):
            self.config = dataclasses.replace(self.defaults)
        if body.get("reset_stats"):
            self.stats = Stats(in_flight=self.stats.in_flight, max_in_flight=self.stats.in_flight)
            self.last_request = None
        for key, value in body.items():
            if key in _CONTROL_TYPES:
                setattr(self.config, key, float(value) if key.endswith("delay") else value)
        if body.get("loading") is False:
            self.loading_until = 0.0  # also ends a --loading-seconds window
        if self.config.hold_streams:
            self.streams_released.clear()
        else:
            self.streams_released.set()
        return web.json_response(self.control_snapshot())


async def _form(request: web.Request, upload: str) -> dict[str, bytes]:
    """The multipart form's fields by name (parsed by the stdlib, not by the router's code);
    a 400 unless it has the field ``upload``."""
    content_type = request.headers.get("content-type", "")  # its bytes, as aiohttp decoded them
    head = f"Content-Type: {content_type}\r\n\r\n".encode("utf-8", "surrogateescape")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + await request.read())
    if not message.is_multipart():
        raise _bad_request("expected a multipart/form-data body")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    if upload not in fields:
        raise _bad_request(f"the form needs a '{upload}' file")
    return fields


def _text(form: dict[str, bytes], name: str) -> str:
    return form.get(name, b"").decode(errors="replace")  # a form's text may be any bytes


def _images_response(picture: bytes) -> web.Response:
    data = [{"b64_json": base64.b64encode(picture).decode("ascii")}]
    return web.json_response({"created": int(time.time()), "data": data})


def _split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` consecutive pieces (the last ones empty if it is short)."""
    size = -(-len(text) // n) if text else 0
    return [text[i * size : (i + 1) * size] for i in range(n)]


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible backend for tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--model-name", default="fake-model")
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between SSE events")
    p.add_argument("--response-delay", type=float, default=0.0)
    p.add_argument("--loading-seconds", type=float, default=0.0)
    p.add_argument("--loading", action="store_true", help="/health is 503 until changed")
    p.add_argument("--fail-status", type=int, default=None)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--die-mid-stream", type=int, default=None, metavar="K")
    p.add_argument("--no-responses", action="store_true")
    p.add_argument("--no-health", action="store_true", help="no /health route at all")
    p.add_argument(
        "--prefix",
        default="",
        help="serve the model routes under this path too (e.g. /openai), as a proxy would",
    )
    p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--log-requests", action="store_true", help="a line on stderr for each request")
    p.add_argument("--record-signals", metavar="FILE", default=None)
    p.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process is no longer parent"
    )
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    defaults = Config(
        fail_status=args.fail_status,
        hang=args.hang,
        die_mid_stream=args.die_mid_stream,
        chunk_delay=args.chunk_delay,
        chunks=args.chunks,
        loading=args.loading,
        response_delay=args.response_delay,
        no_responses=args.no_responses,
    )
    server = FakeServer(
        defaults,
        args.model_name,
        args.embedding_dim,
        args.loading_seconds,
        not args.no_health,
        args.log_requests,
    )
    # handler_cancellation=True: cancel handlers when the client disconnects
    # (aiohttp >= 3.9 does not by default), so "cancelled" can be counted.
    app = server.make_app()
    if args.prefix:  # the same routes, and their requests recorded, under the prefix too
        app.add_subapp(args.prefix, server.make_app(tracked=False))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    tls = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()
        while True:
            await asyncio.sleep(0.5)
            if args.parent_pid is not None and os.getppid() != args.parent_pid:
                return  # orphaned: the test process is gone
    finally:
        await runner.cleanup()


def _record_signals(path: str, ignore_sigterm: bool) -> None:
    def record(signum: int, frame: object) -> None:
        with open(path, "a", encoding="utf-8") as file:
            file.write(signal.Signals(signum).name + "\n")
        if not (ignore_sigterm and signum == signal.SIGTERM):
            os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, record)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.record_signals is not None:
        _record_signals(args.record_signals, args.ignore_sigterm)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
