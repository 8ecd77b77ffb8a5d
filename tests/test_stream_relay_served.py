"""A streamed answer through the router on real sockets, when its client falls behind.

While the client keeps up, events go from the backend's connection to the client's in
the connection's own callback; when it falls behind, they wait in the backend's
connection, which stops reading. Here the client stops reading a 64 MB stream for a
while: the backend is held back (the router buffers a bounded amount), and once the
client reads again it gets every byte, in order.
"""

from __future__ import annotations

import asyncio
import json

from config_builder import entry, make_config
from router_served import RawClient, served
from scripted_backend import read_request
from slm_server.router.app import RouterApp

EVENT_COUNT = 8000
EVENTS = [b"data: %06d %s\n\n" % (index, b"x" * 8000) for index in range(EVENT_COUNT)]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class FastBackend:
    """Streams EVENTS as fast as its client takes them; counts what it has written."""

    def __init__(self) -> None:
        self.written = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        try:
            for event in EVENTS:
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                await writer.drain()
                self.written += 1
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return bytes(body)
        body += chunk[:-2]


async def test_a_client_that_falls_behind_holds_the_backend_back_and_misses_nothing() -> None:
    backend = FastBackend()
    listener = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    app = RouterApp(make_config({"chat": entry("m-chat", port, default_timeout=60)}))
    request = {"model": "m-chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with served(app) as url:
            client = await RawClient.post(url, "/v1/chat/completions", json.dumps(request).encode())
            head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"transfer-encoding: chunked" in head
            await asyncio.sleep(1.0)  # the client reads nothing; the backend writes on
            held_at = backend.written
            # Kernel buffers on both sides take some MB; the router adds a bounded amount.
            assert held_at < EVENT_COUNT * 0.6, f"{held_at} of {EVENT_COUNT} events written"
            body = await asyncio.wait_for(read_chunked(client.reader), 60)
            assert body == b"".join(EVENTS)
            await client.hang_up()
    finally:
        listener.close()
        await app.aclose()
