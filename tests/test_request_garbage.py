"""A request served end to end leaves no reference cycle behind.

The router keeps the cyclic garbage collector rare (see settle_garbage_collector): a
cycle made per request would pile up until a collection, which then costs a pause and
all the memory meanwhile. Here requests go through the router's own server on a real
socket with the collector off, and what a collection then finds must not grow with the
number of requests.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator

import pytest

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from router_served import served
from slm_server.router.app import RouterApp

REQUESTS = 200


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


def chat(stream: bool) -> bytes:
    body = json.dumps(
        {"model": "m-chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: router\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def one_answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"content-length: " in head:
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    else:
        await reader.readuntil(b"0\r\n\r\n")


async def cycles_after(url: str, count: int, stream: bool) -> int:
    """Objects in cycles a collection finds after ``count`` requests on one connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = chat(stream)
    gc.collect()
    for _ in range(count):
        writer.write(request)
        await asyncio.wait_for(one_answer(reader), 10)
    found = gc.collect()
    writer.close()
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_requests_leave_no_cycles_behind(fake: FakeBackend, stream: bool) -> None:
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))
    gc.disable()
    try:
        async with served(app) as url:
            await cycles_after(url, 20, stream)  # warmed up: caches and pools filled
            few = await cycles_after(url, 10, stream)
            many = await cycles_after(url, REQUESTS, stream)
    finally:
        gc.enable()
        await app.aclose()
    # Per request, at most a fraction of an object (the client's own, the test's loop).
    assert many - few < REQUESTS // 4, (few, many)
