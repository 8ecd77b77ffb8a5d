"""What the router's server does with SIGHUP over its whole life, and the shutdown grace it
takes when the shutdown begins.

``GracefulServer`` in this process, on a real socket, around a small ASGI app whose
lifespan and one endpoint hold until the test lets them go; real signals, sent to this
process (without the server's handler, SIGHUP would end the test run itself).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import httpx
import pytest
import uvicorn

from net import eventually
from slm_server.router.asgi import Receive, Scope, Send
from slm_server.router.http1 import Http1Protocol
from slm_server.router.shutdown import GracefulServer


class HeldApp:
    """Lifespan start-up and shutdown send this process SIGHUP, then wait for the test's
    go; ``GET /hold`` answers only once the server cancels it."""

    def __init__(self) -> None:
        self.starting = asyncio.Event()
        self.stopping = asyncio.Event()
        self.go = asyncio.Event()
        self.held = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await self._hang_up_then_wait(self.starting)
                await send({"type": "lifespan.startup.complete"})
            await self._hang_up_then_wait(self.stopping)
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.held.set()
        await asyncio.Event().wait()  # until the shutdown's grace is over

    async def _hang_up_then_wait(self, reached: asyncio.Event) -> None:
        self.go.clear()
        os.kill(os.getpid(), signal.SIGHUP)
        reached.set()
        await asyncio.wait_for(self.go.wait(), 10)


def ignored(caplog: pytest.LogCaptureFixture, why: str) -> bool:
    return any(f"SIGHUP ignored: {why}" in record.getMessage() for record in caplog.records)


async def test_sighup_is_ignored_while_starting_and_stopping_and_reloads_in_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "slm_server.router.shutdown")
    app = HeldApp()
    hangups = 0

    def hangup() -> None:
        nonlocal hangups
        hangups += 1

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, http=Http1Protocol, timeout_graceful_shutdown=60
    )
    grace_s = 60.0
    server = GracefulServer(config, hangup=hangup, grace_s=lambda: grace_s)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.wait_for(app.starting.wait(), 15)
        await eventually(lambda: ignored(caplog, "the server is still starting"), 5, "the log")
        app.go.set()
        await eventually(lambda: server.started, 15, "the start-up to complete")
        assert hangups == 0

        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: hangups == 1, 5, "SIGHUP to reach the server")

        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hold"
        async with httpx.AsyncClient(timeout=30) as client:
            held = asyncio.create_task(client.get(url))
            await asyncio.wait_for(app.held.wait(), 10)
            grace_s = 0.5  # as a config reload would change it after start-up
            asked = time.monotonic()
            server.should_exit = True
            await asyncio.wait_for(app.stopping.wait(), 10)
            assert time.monotonic() - asked < 5  # the new grace, not the 60 s of start-up
            await eventually(lambda: ignored(caplog, "the server is shutting down"), 5, "the log")
            app.go.set()
            await asyncio.wait_for(serving, 10)
            assert (await held).status_code == 500  # cut short at the grace's end
        assert hangups == 1
    finally:
        server.should_exit = True
        app.go.set()
        await asyncio.wait_for(serving, 10)
        sock.close()


class TickCounting(GracefulServer):
    """Counts the wake-ups of the server's own loop."""

    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


async def answer_ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_an_idle_server_wakes_once_a_second_and_stops_at_once_on_sigterm() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(answer_ok, lifespan="off", log_config=None, http=Http1Protocol)
    server = TickCounting(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, 15, "the server to start")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        async with httpx.AsyncClient(timeout=10) as client:
            first = (await client.get(url)).headers["date"]
            before = server.ticks
            await asyncio.sleep(2.5)
            # uvicorn's own loop wakes ten times a second, idle or not.
            assert server.ticks - before <= 4
            assert (await client.get(url)).headers["date"] != first  # still renewed each second
        ticked = server.ticks
        await eventually(lambda: server.ticks > ticked, 3, "a tick")  # the next is a second away
        asked = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 10)
        assert time.monotonic() - asked < 0.5  # not at the next tick, a second later
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()
