"""What a backend sends is bounded: huge headers, a stream line without end, a huge answer.

The real router (a subprocess) in front of a scripted backend: a raw asyncio server in
the test's own loop that writes exactly the bytes each case needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from config_builder import entry
from router_proc import RouterProcess
from slm_server.translate.sse import MAX_EVENT_BYTES
from slm_server.upstream import MAX_HEADER_BYTES

_ENDLESS_CAP = 8 * MAX_EVENT_BYTES  # the backend stops there: far past any limit
_CHUNK = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}\n\n'
MESSAGES_REQUEST = {"max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
_COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}


def native_response(response_id: str, text: str) -> dict[str, object]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "m",
        "output": [{**message, "content": content}],
    }


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n" % status + extra
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


class ScriptedBackend:
    """Answers by path and by markers in the request; records what it had to do."""

    def __init__(self) -> None:
        self.port = 0
        self.endless_sent = 0  # bytes of the endless line written before the router hung up
        self.endless_done = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                await self.answer(head.split(b" ")[1], body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, path: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        request = json.loads(body) if body else {}
        text = json.dumps(request.get("messages", request.get("input", "")))
        if path == b"/v1/chat/completions" and request.get("stream"):
            await self.endless_line(writer)
        elif path == b"/v1/chat/completions" and "huge-headers" in text:
            many = b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 1000) for n in range(100))
            writer.write(answer(200, json.dumps(_COMPLETION).encode(), many))
        elif path == b"/v1/chat/completions":
            writer.write(answer(200, json.dumps(_COMPLETION).encode()))
        elif path == b"/v1/responses" and "big" in text:
            big = native_response("resp_big", "x" * (MAX_EVENT_BYTES + 1000))
            writer.write(answer(200, json.dumps(big).encode()))
        elif path == b"/v1/responses":
            writer.write(answer(200, json.dumps(native_response("resp_small", "small")).encode()))
        else:
            writer.write(answer(404, b'{"error": {"message": "no such route"}}'))
        await writer.drain()

    async def endless_line(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        writer.write(_CHUNK + b"data: ")
        piece = b"x" * 65536
        try:
            while self.endless_sent < _ENDLESS_CAP:
                writer.write(piece)
                await writer.drain()
                self.endless_sent += len(piece)
        finally:
            self.endless_done.set()
        await asyncio.Event().wait()  # past the cap: hold the connection open


@pytest.fixture
async def backend() -> AsyncIterator[ScriptedBackend]:
    scripted = ScriptedBackend()
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    async with server:
        yield scripted
        server.close()


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits")


@pytest.fixture
def router(backend: ScriptedBackend, router_dir: Path) -> Iterator[RouterProcess]:
    config = {"models": {"chat": entry("m", backend.port, default_timeout=20)}}
    process = RouterProcess(config, router_dir)
    # start() polls with blocking sleeps: the scripted backend is not needed before it returns.
    try:
        yield process.start()
    finally:
        process.stop()


async def test_huge_response_headers_are_a_502_in_the_envelope(router: RouterProcess) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        huge = {"model": "m", "messages": [{"role": "user", "content": "huge-headers"}]}
        response = await client.post("/v1/chat/completions", json=huge)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "server_error"
        assert f"headers exceed {MAX_HEADER_BYTES} bytes" in error["message"]
        plain = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        response = await client.post("/v1/chat/completions", json=plain)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "request_body", "error_event"),
    [
        ("/v1/messages", MESSAGES_REQUEST, "error"),
        ("/v1/responses", {"input": "x"}, "response.failed"),
    ],
)
async def test_a_stream_line_without_end_ends_the_converted_stream_in_band(
    backend: ScriptedBackend,
    router: RouterProcess,
    path: str,
    request_body: dict[str, object],
    error_event: str,
) -> None:
    payload = {"model": "m", "stream": True, **request_body}
    if path == "/v1/responses":
        backend_has_no_responses(backend)
    async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
        async with client.stream("POST", path, json=payload) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
        await asyncio.wait_for(backend.endless_done.wait(), 10)
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[-1].startswith(f"event: {error_event}\n"), events[-1][:300]
    assert "broken stream" in events[-1] and str(MAX_EVENT_BYTES) in events[-1]
    # The router hung up soon after the limit; it did not read on to the backend's cap.
    assert backend.endless_sent < _ENDLESS_CAP


def backend_has_no_responses(backend: ScriptedBackend) -> None:
    """/v1/responses answers 404 from now on: the router converts to a chat stream."""
    original = backend.answer

    async def answer_without_responses(
        path: bytes, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if path == b"/v1/responses":
            writer.write(answer(404, b'{"error": {"message": "no such route"}}'))
            await writer.drain()
            return
        await original(path, body, writer)

    backend.answer = answer_without_responses  # type: ignore[method-assign]


async def test_a_native_answer_too_large_to_keep_is_relayed_but_not_stored(
    router: RouterProcess,
) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
        small = await client.post("/v1/responses", json={"model": "m", "input": "hi"})
        assert small.json()["id"] == "resp_small"
        big = await client.post("/v1/responses", json={"model": "m", "input": "big"})
        assert big.status_code == 200
        assert len(big.json()["output"][0]["content"][0]["text"]) == MAX_EVENT_BYTES + 1000
        follow_up = {"model": "m", "input": "and?", "previous_response_id": "resp_small"}
        assert (await client.post("/v1/responses", json=follow_up)).status_code == 200
        follow_up["previous_response_id"] = "resp_big"
        response = await client.post("/v1/responses", json=follow_up)
        assert response.status_code == 404
        assert "unknown or expired" in response.json()["error"]["message"]
