"""A fake OpenAI-compatible backend, as cheap per request as Python allows.

The benchmark measures what a proxy adds, so the backend must cost as little
as possible: a bare asyncio protocol on uvloop with a hand-rolled HTTP/1.1
parser (no framework, no per-request objects beyond the bytes) and answers
built once at start-up.

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` JSON.
- The same with ``"stream": true``: an SSE stream of ``chat.completion.chunk``
  events, one HTTP chunk each, then ``data: [DONE]``. The request may carry
  ``bench_chunks`` (events) and ``bench_gap_ms`` (pause between them); proxies
  forward unknown fields untouched, so the client steers the backend through them.
- ``GET /health``: 200.
- ``GET /bench/served``: how many chat requests this process has received (each one
  answered at once, as above), and the
  CLOCK_MONOTONIC time the first of them arrived (``null`` before any): the replica
  benchmarks count each replica's share and see when a restarted one is back.

Run: ``python -m bench.backend --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, cast

import uvloop

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    },
    separators=(",", ":"),
).encode()


def _chunk_event(content: str, finish_reason: str | None) -> bytes:
    """One SSE event framed as one HTTP/1.1 chunk, as llama-server sends it."""
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}],
    }
    event = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return _http_chunk(event)


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: %d\r\nconnection: keep-alive\r\n\r\n" % len(body)
        + body
    )


COMPLETION_RESPONSE = _response(b"200 OK", b"application/json", _COMPLETION)
HEALTH_RESPONSE = _response(b"200 OK", b"application/json", b'{"status":"ok"}')
# llama-server's own /completion answer: what slm_server's check of a binary asks for.
ONE_TOKEN_RESPONSE = _response(
    b"200 OK", b"application/json", b'{"content":" Paris","tokens_predicted":1}'
)
NOT_FOUND_RESPONSE = _response(b"404 Not Found", b"application/json", b'{"error":"not found"}')
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
)
TOKEN_EVENT = _chunk_event("tok ", None)
LAST_EVENT = _chunk_event("end", "stop")
STREAM_END = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CONNECTION_CLOSE = b"\r\nconnection: close"


class Defaults:
    """Stream shape used when a request does not name its own."""

    chunks = 64
    gap_ms = 0.0


class Served:
    """Chat requests this process has received; one counter, so cheap on the hot path."""

    requests = 0
    first_at: float | None = None  # time.monotonic() of the first one's arrival

    @classmethod
    def one(cls) -> None:
        if cls.first_at is None:
            cls.first_at = time.monotonic()
        cls.requests += 1

    @classmethod
    def response(cls) -> bytes:
        body = json.dumps({"requests": cls.requests, "first_at": cls.first_at}).encode()
        return _response(b"200 OK", b"application/json", body)


class BenchProtocol(asyncio.Protocol):
    """One client connection: keep-alive, requests answered in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streaming: asyncio.Task[None] | None = None
        self._closed = False
        # Set while the transport's write buffer is full (a slow reader).
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._streaming is not None:
            self._streaming.cancel()
        self._resume_writing_waiter()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._resume_writing_waiter()

    def _resume_writing_waiter(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        # A request that arrives mid-stream waits its turn (HTTP/1.1 ordering).
        if self._streaming is None:
            self._process()

    def _process(self) -> None:
        transport = self._transport
        assert transport is not None
        while not self._closed:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = _content_length(head)
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            keep_alive = _CONNECTION_CLOSE not in head
            if head.startswith(b"post /v1/chat/completions "):
                Served.one()
                stream = _stream_shape(body)
                if stream is not None:
                    self._streaming = asyncio.ensure_future(self._stream(*stream, keep_alive))
                    return
                transport.write(COMPLETION_RESPONSE)
            elif head.startswith(b"get /health "):
                transport.write(HEALTH_RESPONSE)
            elif head.startswith(b"get /bench/served "):
                transport.write(Served.response())
            elif head.startswith(b"post /completion "):
                transport.write(ONE_TOKEN_RESPONSE)
            else:
                transport.write(NOT_FOUND_RESPONSE)
            if not keep_alive:
                transport.close()
                return

    async def _stream(self, chunks: int, gap_s: float, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(STREAM_HEAD)
        for index in range(chunks):
            if gap_s > 0:
                await asyncio.sleep(gap_s)
            if self._closed:
                return
            transport.write(LAST_EVENT if index == chunks - 1 else TOKEN_EVENT)
            if self._drained is not None:
                await self._drained
        transport.write(STREAM_END)
        self._streaming = None
        if not keep_alive:
            transport.close()
        elif self._buffer:
            self._process()


def _content_length(head: bytes) -> int:
    start = head.find(_CONTENT_LENGTH)
    if start < 0:
        return 0
    start += len(_CONTENT_LENGTH)
    end = head.find(b"\r\n", start)
    return int(head[start:] if end < 0 else head[start:end])


def _stream_shape(body: bytes) -> tuple[int, float] | None:
    """(events, gap in seconds) for a streaming request, None for a plain one."""
    # Plain requests skip the JSON parse: the hot path of the plain-request test.
    if b'"stream"' not in body:
        return None
    request: dict[str, Any] = json.loads(body)
    if request.get("stream") is not True:
        return None
    chunks = int(request.get("bench_chunks", Defaults.chunks))
    gap_ms = float(request.get("bench_gap_ms", Defaults.gap_ms))
    return max(chunks, 1), gap_ms / 1000


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BenchProtocol, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible backend for bench/")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=Defaults.chunks, help="default events")
    parser.add_argument("--gap-ms", type=float, default=Defaults.gap_ms, help="default gap")
    args = parser.parse_args()
    Defaults.chunks = args.chunks
    Defaults.gap_ms = args.gap_ms
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
