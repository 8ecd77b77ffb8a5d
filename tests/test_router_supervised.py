"""The router owning its backends (what ``serve`` runs), with fake backends as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port
from router_served import lifespan_client
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.router.app import RouterApp
from slm_server.supervisor import RestartPolicy, Supervisor

FAST = RestartPolicy(startup_timeout_s=10, max_start_failures=2, backoff_s=(0.05,), stop_grace_s=2)
CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


def fake_launcher(*args: str) -> Any:
    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        return LaunchSpec([sys.executable, str(SCRIPT), "--port", str(model.port), *args])

    return launch


@asynccontextmanager
async def serving(
    tmp_path: Path, launcher: Any, **fields: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Supervisor]]:
    """RouterApp + Supervisor through the ASGI lifespan, as uvicorn drives them in ``serve``."""
    config = make_config({"chat": entry("m-chat", free_port(), **fields)})
    supervisor = Supervisor(config, launcher, tmp_path / "logs", FAST)
    app = RouterApp(config, supervisor)
    async with lifespan_client(app) as client:
        yield client, supervisor


async def backend_health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/backends/health")
    assert response.status_code == 200
    report: dict[str, Any] = response.json()["chat"]
    return report


async def test_request_waits_for_a_loading_backend_then_is_answered(tmp_path: Path) -> None:
    async with serving(tmp_path, fake_launcher("--loading-seconds", "1")) as (client, _):
        assert (await backend_health(client))["state"] == "starting"
        response = await client.post("/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "chat.completion"
        report = await backend_health(client)
        assert report["state"] == "ready" and report["status"] == "healthy"
        assert psutil.pid_exists(report["pid"])


async def test_backend_that_cannot_start_answers_503_with_its_reason(tmp_path: Path) -> None:
    def broken(role: str, model: ModelEntry) -> LaunchSpec:
        return LaunchSpec([sys.executable, "-c", "print('gguf: bad magic'); exit(2)"])

    async with serving(tmp_path, broken) as (client, _):
        response = await client.post("/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 503
        # Until the next start, which the first request after the cooldown makes.
        assert 1 <= int(response.headers["retry-after"]) <= FAST.retry_failed_after_s
        message = response.json()["error"]["message"]
        assert "could not be started" in message and "gguf: bad magic" in message
        report = await backend_health(client)
        assert report["state"] == "failed"
        assert "exited with code 2" in report["reason"]
        assert "gguf: bad magic" in report["log_tail"]
    log = (tmp_path / "logs" / "m-chat.log").read_text()
    assert "gguf: bad magic" in log


async def test_killed_backend_is_restarted_and_serves_again(tmp_path: Path) -> None:
    async with serving(tmp_path, fake_launcher()) as (client, supervisor):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        process = supervisor.processes["chat"]
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: process.generation == 2, 10, "the backend to come back")
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        report = await backend_health(client)
        assert report["restarts"] == 1 and report["pid"] not in (None, first)


async def test_shutdown_stops_the_backends(tmp_path: Path) -> None:
    pids: Sequence[int | None] = ()
    async with serving(tmp_path, fake_launcher()) as (client, supervisor):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        pids = [process.pid for process in supervisor.processes.values()]
    assert pids and all(pid is not None and not psutil.pid_exists(pid) for pid in pids)


async def test_server_that_accepts_only_its_own_model_name_gets_it(tmp_path: Path) -> None:
    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        argv = [sys.executable, str(SCRIPT), "--port", str(model.port)]
        return LaunchSpec(argv, upstream_model="/models/served-dir")

    async with serving(tmp_path, launch) as (client, supervisor):
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        port = supervisor.processes["chat"].entry.port
        async with httpx.AsyncClient() as direct:
            seen = (await direct.get(f"http://127.0.0.1:{port}/_fake/last_request")).json()
        assert json.loads(seen["body"])["model"] == "/models/served-dir"


READY_REQUEST = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})


def ready_request_launcher(*args: str) -> Any:
    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        argv = [sys.executable, str(SCRIPT), "--port", str(model.port), *args]
        return LaunchSpec(argv, ready_request=READY_REQUEST)

    return launch


async def test_ready_request_holds_readiness_until_the_model_answers(tmp_path: Path) -> None:
    """Like mlx_lm.server: /health is 200 while the model still loads."""
    launch = ready_request_launcher("--response-delay", "1.5")  # the first reply waits for it
    async with serving(tmp_path, launch) as (client, supervisor):
        process = supervisor.processes["chat"]
        async with httpx.AsyncClient() as direct:
            await eventually_answers(direct, f"{process.entry.server_url}/health")
        assert process.state == "starting"
        await eventually(lambda: process.state == "ready", 10, "the model to load")
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_health_is_not_healthy_before_the_supervisor_calls_the_backend_ready(
    tmp_path: Path,
) -> None:
    """Like mlx_lm.server: its /health answers 200 before the model has loaded."""
    launch = ready_request_launcher("--response-delay", "1.5")
    async with serving(tmp_path, launch) as (client, supervisor):
        process = supervisor.processes["chat"]
        async with httpx.AsyncClient() as direct:
            await eventually_answers(direct, f"{process.entry.server_url}/health")
        loading = await backend_health(client)
        assert loading["state"] == "starting"
        assert loading["status"] == "unhealthy"
        assert "answers on /health but is starting" in loading["error"]
        await eventually(lambda: process.state == "ready", 10, "the model to load")
        assert (await backend_health(client))["status"] == "healthy"


async def test_health_is_probed_where_the_backend_says_it_is_up(tmp_path: Path) -> None:
    """Like llama_cpp.server, whose launch names /v1/models: it has no /health."""

    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        argv = [sys.executable, str(SCRIPT), "--port", str(model.port), "--no-health"]
        return LaunchSpec(argv, health_path="/v1/models")

    async with serving(tmp_path, launch) as (client, supervisor):
        await supervisor.processes["chat"].ensure_ready()
        report = await backend_health(client)
        assert (report["state"], report["status"]) == ("ready", "healthy"), report


async def test_model_that_fails_to_load_fails_fast_with_the_reason(tmp_path: Path) -> None:
    """Its server stays up but cannot answer (e.g. an HF model offline): failed, not a hang."""
    async with serving(tmp_path, ready_request_launcher("--fail-status", "500")) as (client, _):
        response = await client.post("/v1/chat/completions", json=CHAT, timeout=8)
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert "the model did not load (500" in message
        assert (await backend_health(client))["state"] == "failed"


async def eventually_answers(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(500):
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(url)).status_code == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered 200")


async def test_endpoint_the_launch_spec_lacks_is_converted_without_a_try(tmp_path: Path) -> None:
    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        argv = [sys.executable, str(SCRIPT), "--port", str(model.port)]  # it has /v1/responses
        return LaunchSpec(argv, native_endpoints=frozenset({"/v1/chat/completions"}))

    request = {"model": "m-chat", "input": "hello"}
    async with serving(tmp_path, launch) as (client, supervisor):
        response = await client.post("/v1/responses", json=request, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["x-slm-converted-from"] == "chat-completions; reason=not-served"
        assert response.json()["output"][0]["content"][0]["text"] == "echo: hello"
        port = supervisor.processes["chat"].entry.port
        async with httpx.AsyncClient() as direct:
            seen = (await direct.get(f"http://127.0.0.1:{port}/_fake/last_request")).json()
            stats = (await direct.get(f"http://127.0.0.1:{port}/_fake/stats")).json()
        assert seen["path"] == "/v1/chat/completions" and stats["requests"] == 1


async def test_endpoint_the_backend_has_is_used_natively(tmp_path: Path) -> None:
    async with serving(tmp_path, fake_launcher()) as (client, _):
        response = await client.post("/v1/responses", json={"model": "m-chat", "input": "hi"})
        assert response.status_code == 200, response.text
        assert "x-slm-converted-from" not in response.headers
        assert response.json()["object"] == "response"


async def test_declared_endpoint_that_answers_404_is_learned(tmp_path: Path) -> None:
    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        argv = [sys.executable, str(SCRIPT), "--port", str(model.port), "--no-responses"]
        return LaunchSpec(
            argv, native_endpoints=frozenset({"/v1/chat/completions", "/v1/responses"})
        )

    request = {"model": "m-chat", "input": "hello"}
    async with serving(tmp_path, launch) as (client, supervisor):
        assert (await client.post("/v1/responses", json=request)).status_code == 200
        port = supervisor.processes["chat"].entry.port
        async with httpx.AsyncClient() as direct:
            before = (await direct.get(f"http://127.0.0.1:{port}/_fake/stats")).json()["requests"]
            assert (await client.post("/v1/responses", json=request)).status_code == 200
            after = (await direct.get(f"http://127.0.0.1:{port}/_fake/stats")).json()["requests"]
        assert after == before + 1  # straight to chat: the 404 was remembered
