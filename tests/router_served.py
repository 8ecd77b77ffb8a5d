"""The router app in this process, served by uvicorn on a real loopback socket.

For tests that need what only a socket shows (a client that closes its connection) and
that also look inside the app (its admission gates) while it runs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from config_builder import entry, make_config
from net import eventually
from slm_server.router.app import RouterApp
from slm_server.router.asgi import Receive, Scope, Send
from slm_server.router.http1 import Http1Protocol

App = Callable[[Scope, Receive, Send], Awaitable[None]]


@asynccontextmanager
async def served(app: App) -> AsyncIterator[str]:
    """``app`` (the router's, or one wrapping it) under uvicorn (lifespan on, as ``serve``
    runs it); yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        ws="none",
        http=Http1Protocol,  # the router's own, as serve runs it
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), 15, "uvicorn to start")
        assert not task.done(), "uvicorn stopped at start-up"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


class RawClient:
    """One request written on its own connection, for a client that hangs up while waiting."""

    def __init__(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        self.writer = writer
        self.reader = reader

    @classmethod
    async def post(cls, url: str, path: str, body: bytes) -> RawClient:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        return cls(writer, reader)

    async def hang_up(self) -> None:
        self.writer.close()
        await asyncio.wait_for(self.writer.wait_closed(), 5)


@asynccontextmanager
async def router_for(port: int, **router: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A router serving model ``m-chat`` from the backend on ``port`` (``router``: its
    settings), and a client to it."""
    app = RouterApp(make_config({"chat": entry("m-chat", port)}, **router))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


@asynccontextmanager
async def lifespan_client(app: RouterApp, timeout_s: float = 5) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` started and stopped through the ASGI lifespan, as uvicorn drives it (its
    backends too, for a router that runs them), and an in-process client to it."""
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, str]:
        return await events.get()

    async def send(message: dict[str, Any]) -> None:
        await replies.put(message)

    lifespan = asyncio.create_task(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
    await events.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(replies.get(), 15)
    assert started["type"] == "lifespan.startup.complete", started
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://router", timeout=timeout_s
        ) as client:
            yield client
    finally:
        await events.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 15)
