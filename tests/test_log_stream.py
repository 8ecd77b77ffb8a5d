"""``GET /admin/logs/{role}`` as a follower reads it: the router (with its supervisor) under
uvicorn on a real socket, over a fake backend that writes log lines on demand."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from config_builder import make_config
from net import eventually
from on_demand_serving import POLICY, Launcher, chat, model
from router_served import served
from slm_server.admin.router_log import RouterLog
from slm_server.log_feed import LogFeed
from slm_server.router.app import RouterApp
from slm_server.supervisor import BackendProcess, Supervisor

FOLLOW = "/admin/logs/chat?follow=1&tail=0"


@dataclass
class Logs:
    client: httpx.AsyncClient  # to the router
    backend: httpx.AsyncClient  # to the fake backend itself, to make it write lines
    url: str
    process: BackendProcess

    @property
    def feed(self) -> LogFeed:
        return self.process.log.feed

    async def say(self, *lines: str) -> None:
        """The backend writes ``lines`` to its output; returns once they are written."""
        response = await self.backend.post("/_fake/say", json={"lines": list(lines)})
        assert response.status_code == 200, response.text

    async def kept(self, line: str) -> None:
        """Wait until the router has read ``line`` from the backend."""
        await eventually(lambda: line in self.feed.tail(1), 5, f"{line!r} in the log")


@asynccontextmanager
async def logs_served(tmp_path: Path, **router: object) -> AsyncIterator[Logs]:
    config = make_config({"chat": model("chat", on_demand=False)}, **router)
    launcher = Launcher({"chat": ["--log-requests"]})
    supervisor = Supervisor(config, launcher, tmp_path / "logs", POLICY)
    # As serve installs it: on the loggers whose lines it keeps, at their level.
    router_log = RouterLog()
    logger = logging.getLogger("slm_server")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(router_log)
    app = RouterApp(config, supervisor, router_log=router_log)
    process = supervisor.processes["chat"]
    backend_url = f"http://127.0.0.1:{process.entry.port}"
    try:
        async with (
            served(app) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            httpx.AsyncClient(base_url=backend_url, timeout=10) as backend,
        ):
            await eventually(lambda: process.state == "ready", 10, "chat ready")
            yield Logs(client, backend, url, process)
    finally:
        logger.removeHandler(router_log)
        logger.setLevel(level)


async def open_follower(url: str, path: str, receive_buffer: int | None = None) -> socket.socket:
    """A raw connection that asks for ``path`` and reads nothing yet; ``receive_buffer``
    (bytes) keeps the kernel from buffering much for it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock


async def read_until(sock: socket.socket, wanted: bytes, within_s: float) -> bytes:
    received = bytearray()
    async with asyncio.timeout(within_s):
        while wanted not in received:
            chunk = await asyncio.get_running_loop().sock_recv(sock, 1 << 16)
            assert chunk, f"the stream ended before {wanted!r}"
            received += chunk
    return bytes(received)


async def test_a_line_the_backend_writes_reaches_a_follower_within_200_ms(
    tmp_path: Path,
) -> None:
    async with (
        logs_served(tmp_path) as logs,
        logs.client.stream("GET", FOLLOW) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        lines = response.aiter_lines()
        took: list[float] = []
        for n in range(10):
            began = time.monotonic()
            await logs.say(f"marker {n}")
            assert await asyncio.wait_for(anext(lines), 2) == f"marker {n}"
            took.append(time.monotonic() - began)
        # Measured here: 2-5 ms a line, the backend's write included. One sample may
        # meet a busy machine (2 cores shared by the tests running at once).
        assert sum(1 for seconds in took if seconds >= 0.2) <= 1, took
        # A request through the router is logged by the backend, and followed too.
        answered = await logs.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert answered.status_code == 200
        line = await asyncio.wait_for(anext(lines), 2)
        assert line.endswith("POST /v1/chat/completions"), line


async def test_tail_gives_exactly_the_last_lines_then_the_answer_ends(tmp_path: Path) -> None:
    async with logs_served(tmp_path) as logs:
        await logs.say(*(f"old {n}" for n in range(150)))
        await logs.kept("old 149")
        last_ten = await logs.client.get("/admin/logs/chat?tail=10")
        assert last_ten.status_code == 200
        assert last_ten.text == "".join(f"old {n}\n" for n in range(140, 150))
        default = await logs.client.get("/admin/logs/chat")
        assert default.text.splitlines() == [f"old {n}" for n in range(50, 150)]
        none = await logs.client.get("/admin/logs/chat?tail=0")
        assert none.status_code == 200 and none.text == ""


async def test_a_follower_that_never_reads_does_not_slow_the_backend(tmp_path: Path) -> None:
    async with logs_served(tmp_path) as logs:
        sleeper = await open_follower(logs.url, FOLLOW, receive_buffer=4096)
        try:
            await eventually(lambda: logs.feed.followers == 1, 5, "the follower")
            # 12 MB of output: more than the follower's queue (1 MiB) and every socket
            # buffer between it and the router (a few MB on loopback) can hold.
            filler = "x" * 4000
            began = time.monotonic()
            for batch in range(10):
                await logs.say(*(f"flood {batch}.{n} {filler}" for n in range(300)))
                answered = await logs.client.post("/v1/chat/completions", json=chat("m-chat"))
                assert answered.status_code == 200  # the backend keeps answering
            await logs.say("last of the flood")
            # Measured here: 0.7 s. Held up by its follower, the router would stop reading
            # the backend's output, whose writes would block once their pipe (64 KiB) is
            # full: a `say` would then time out (10 s). The bound catches a slowdown short
            # of that (the router pacing its reads by the reader), with room for a busy
            # machine.
            assert time.monotonic() - began < 5
            await logs.kept("last of the flood")
            assert await logs.process.log.flush(5)
            assert "last of the flood\n" in logs.process.log.path.read_text()
            # The reader resumes: what it missed is said where it was missed, and it is
            # followed again from there.
            received = await read_until(
                sleeper, b" lines dropped here: this reader was too slow\n", 30
            )
            assert b"\n=== slm_server: " in received[-100:]
            await logs.say("after the flood")
            await read_until(sleeper, b"after the flood\n", 5)
        finally:
            sleeper.close()


async def test_a_follower_is_removed_as_soon_as_its_client_leaves(tmp_path: Path) -> None:
    async with logs_served(tmp_path) as logs:
        follower = await open_follower(logs.url, FOLLOW)
        await eventually(lambda: logs.feed.followers == 1, 5, "the follower")
        follower.close()
        # At once: noticed by the client's disconnect, not by a line failing to go out.
        await eventually(lambda: logs.feed.followers == 0, 0.5, "the follower to be gone")
        await logs.say("nobody follows")  # and nothing is queued for anybody
        await logs.kept("nobody follows")


async def test_a_log_that_is_not_there_or_a_bad_query_is_an_error_in_the_envelope(
    tmp_path: Path,
) -> None:
    async with logs_served(tmp_path) as logs:
        missing = await logs.client.get("/admin/logs/nope?follow=1")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "role_not_found"
        assert error["type"] == "not_found_error"
        assert "chat" in error["message"] and "router" in error["message"]
        bad = await logs.client.get("/admin/logs/chat?tail=many")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tail"
        wrong = await logs.client.post("/admin/logs/chat")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"


async def test_the_routers_own_log_shows_its_lines_as_they_are_logged(tmp_path: Path) -> None:
    async with (
        logs_served(tmp_path) as logs,
        logs.client.stream("GET", "/admin/logs/router?follow=1&tail=1000") as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        async with asyncio.timeout(5):
            async for line in lines:  # the start, told before anyone followed
                if "chat: ready (m-chat on port" in line:
                    break
        unloaded = await logs.client.post("/v1/backends/chat/unload")
        assert unloaded.status_code == 200
        async with asyncio.timeout(5):
            async for line in lines:
                if line.endswith(
                    "slm_server.scheduler.owner: unloading chat on request (0 in flight)"
                ):
                    break


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_logs_need_an_admin_key_when_keys_are_set(tmp_path: Path) -> None:
    keys = [
        {"name": "alice", "key_sha256": digest("alice-key")},
        {"name": "ops", "key_sha256": digest("ops-key"), "admin": True},
    ]
    async with logs_served(tmp_path, api_keys=keys) as logs:
        for path in ("/admin/logs/chat", "/admin/logs/router"):
            anonymous = await logs.client.get(path)
            assert anonymous.status_code == 401
            assert anonymous.json()["error"]["code"] == "invalid_api_key"
            user = await logs.client.get(path, headers={"authorization": "Bearer alice-key"})
            assert user.status_code == 403
            assert user.json()["error"]["code"] == "admin_required"
            admin = await logs.client.get(path, headers={"authorization": "Bearer ops-key"})
            assert admin.status_code == 200, admin.text
        restart = await logs.client.post(
            "/v1/backends/chat/restart", headers={"authorization": "Bearer alice-key"}
        )
        assert restart.status_code == 403


async def test_a_router_that_does_not_run_its_backends_has_its_own_log_only() -> None:
    app = RouterApp(make_config({"chat": model("chat")}), router_log=RouterLog())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        backend = await client.get("/admin/logs/chat")
        router = await client.get("/admin/logs/router?tail=5")
    await app.aclose()
    assert backend.status_code == 404
    assert "does not run its backends" in backend.json()["error"]["message"]
    assert router.status_code == 200
