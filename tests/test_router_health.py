"""``/v1/backends/health``: one status per role, for every way a backend can be."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from net import free_port
from slm_server.router.app import RouterApp


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.fixture
async def garbage_port() -> AsyncIterator[int]:
    """A port whose server answers with something that is not HTTP."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def backends_health(app: RouterApp) -> dict[str, dict[str, object]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        response = await client.get("/v1/backends/health")
    await app.aclose()
    assert response.status_code == 200
    return dict(response.json())


async def test_each_status_is_reported_per_role(
    fake: FakeBackend, silent_port: int, garbage_port: int
) -> None:
    loading = FakeBackend()
    loading.start(["--loading"])
    try:
        models = {
            "up": entry("m-up", fake.port),
            "down": entry("m-down", free_port()),
            "off": entry("m-off", free_port(), enabled=False),
            "loading": entry("m-loading", loading.port),
            "silent": entry("m-silent", silent_port),
            "garbage": entry("m-garbage", garbage_port),
        }
        report = await backends_health(RouterApp(make_config(models, health_timeout=0.3)))
    finally:
        loading.stop()

    assert {role: r["status"] for role, r in report.items()} == {
        "up": "healthy",
        "down": "unreachable",
        "off": "disabled",
        "loading": "unhealthy",
        "silent": "timeout",
        "garbage": "error",
    }
    assert report["up"]["model_id"] == "m-up"
    assert report["up"]["backend"] == "llamacpp"
    assert report["up"]["port"] == fake.port
    assert "error" not in report["up"]
    assert report["down"]["error"] == "Connection refused - backend not running"
    assert "Loading model" in str(report["loading"]["error"])
    assert "0.3s" in str(report["silent"]["error"])


async def test_health_follows_the_backend_state(fake: FakeBackend) -> None:
    config = make_config({"m": entry("m", fake.port)})
    assert (await backends_health(RouterApp(config)))["m"]["status"] == "healthy"
    fake.control(loading=True)
    assert (await backends_health(RouterApp(config)))["m"]["status"] == "unhealthy"
    fake.stop()
    assert (await backends_health(RouterApp(config)))["m"]["status"] == "unreachable"


async def test_a_server_without_health_route_is_healthy_when_it_lists_models() -> None:
    """Run elsewhere, like llama_cpp.server: no /health, but /v1/models answers."""
    bare = FakeBackend()
    bare.start(["--no-health"])
    try:
        report = await backends_health(RouterApp(make_config({"m": entry("m", bare.port)})))
    finally:
        bare.stop()
    assert report["m"]["status"] == "healthy", report
