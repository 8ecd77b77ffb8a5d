"""Requests and control calls that meet a config reload under way, over real fake backends.

Each test holds a model busy with a stream the test itself ends (closing it, as a client
that leaves: its request ends at once), so that what happens while a reload drains that
model is decided by the test, not by how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend, running_fake_backend
from net import eventually
from on_demand_serving import Launcher, Served, chat
from reload_serving import model, served_from, write_config
from router_served import served
from slm_server.config import load_config
from slm_server.router.app import RouterApp


@pytest.fixture(autouse=True)
def router_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slm_server")


async def fake_control(served: Served, role: str, **switches: object) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{served.backend_url(role)}/_fake/control", json=switches)
        assert response.status_code == 200


@contextlib.asynccontextmanager
async def held_busy(served: Served, role: str) -> AsyncIterator[None]:
    """``role`` busy with one stream until the block ends (the client then leaves)."""
    await fake_control(served, role, chunk_delay=0.05, chunks=100_000)
    request = {**chat(f"m-{role}"), "stream": True}
    backend = served.app.table.backends[role]
    async with served.client.stream("POST", "/v1/chat/completions", json=request) as stream:
        assert stream.status_code == 200
        await eventually(lambda: backend.in_flight == 1, 5, f"{role}'s stream in flight")
        yield
    await eventually(lambda: backend.in_flight == 0, 5, f"{role}'s stream ended")


async def backend_requests(port: int) -> int:
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"http://127.0.0.1:{port}/_fake/stats")).json()
    return int(stats["requests"])


def waiting_for(served: Served, role: str) -> int:
    """Requests waiting for ``role``'s turn from the scheduler."""
    scheduler = served.app.scheduler
    assert scheduler is not None
    return scheduler.waiting(role)


def reload(served: Served) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(served.client.post("/admin/reload"))


def post(served: Served, path: str, body: dict[str, Any] | None = None) -> asyncio.Task[Any]:
    return asyncio.create_task(served.client.post(path, json=body))


async def test_a_restart_of_a_model_a_reload_removes_is_404_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, c = model(tmp_path, "b"), model(tmp_path, "c", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"b": b, "c": c})
    async with served_from(path) as served:
        await served.ready("b")
        backend_b = served.app.table.backends["b"]
        async with held_busy(served, "b"):
            restarting = post(served, "/v1/backends/b/restart")
            await eventually(lambda: not backend_b.open, 5, "the restart's unload under way")
            write_config(path, {"c": c})
            reloading = reload(served)
            await eventually(lambda: served.app.reloader.busy, 5, "the reload under way")
        assert (await reloading).status_code == 200
        # Its unload done, the restart cannot start what the reload removed.
        restarted = await asyncio.wait_for(restarting, 10)
        assert restarted.status_code == 404, restarted.text
        error = restarted.json()["error"]
        assert error["code"] == "role_not_found"
        assert error["message"] == "'b' was removed from the config by a reload"
        # The scheduler goes on deciding for the others.
        reply = await asyncio.wait_for(
            served.client.post("/v1/chat/completions", json=chat("m-c")), 10
        )
        assert reply.status_code == 200, reply.text
        assert not [r for r in caplog.records if "a pass failed" in r.getMessage()]


async def test_a_request_waiting_for_its_turn_goes_to_the_new_backend_of_a_replaced_model(
    tmp_path: Path,
) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b}, max_loaded_models=1)
    async with served_from(path) as served:
        await served.ready("a")
        async with held_busy(served, "a"):
            waiting = post(served, "/v1/chat/completions", chat("m-b", "wait"))
            await eventually(lambda: waiting_for(served, "b") == 1, 5, "b's request")
            moved = model(tmp_path, "b", on_demand=True)  # another port
            write_config(path, {"a": a, "b": moved}, max_loaded_models=1)
            answer = await served.client.post("/admin/reload")
            assert answer.json()["roles"] == {"a": "unchanged", "b": "replaced"}
            assert not waiting.done()
        # a is idle now: it makes room for b, whose new process serves the waiting request.
        reply = await asyncio.wait_for(waiting, 10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "echo: wait"
        assert served.process("b").entry.port == moved["port"]
        assert await backend_requests(moved["port"]) == 1


async def test_a_queued_request_of_a_replaced_model_is_served_by_its_new_backend(
    tmp_path: Path,
) -> None:
    b = model(tmp_path, "b", max_concurrency=1)
    path = write_config(tmp_path / "models.yaml", {"b": b}, shutdown_grace_s=0.5)
    async with served_from(path) as served:
        await served.ready("b")
        old = served.app.table.backends["b"]
        async with held_busy(served, "b"):
            queued = post(served, "/v1/chat/completions", chat("m-b", "queued"))
            await eventually(lambda: old.queued == 1, 5, "a request queued for b's slot")
            moved = model(tmp_path, "b", max_concurrency=1)
            write_config(path, {"b": moved}, shutdown_grace_s=0.5)
            # The stream outlasts the grace: the old backend is stopped under it, and
            # the queued request, let into the old slot then, must not go to its port.
            answer = await served.client.post("/admin/reload")
            assert answer.status_code == 200, answer.text
        reply = await asyncio.wait_for(queued, 10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "echo: queued"
        assert await backend_requests(moved["port"]) == 1


async def test_a_load_during_a_replace_answers_once_the_new_process_is_ready(
    tmp_path: Path,
) -> None:
    b = model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"b": b})
    async with served_from(path) as served:
        old_pid = await served.ready("b")
        old_backend = served.app.table.backends["b"]
        async with held_busy(served, "b"):
            moved = model(tmp_path, "b")
            write_config(path, {"b": moved})
            reloading = reload(served)
            await eventually(lambda: served.app.table.backends["b"] is not old_backend, 5, "")
            loading = post(served, "/v1/backends/b/load")
            await eventually(lambda: waiting_for(served, "b") == 1, 5, "the load")
        assert (await reloading).status_code == 200
        loaded = await asyncio.wait_for(loading, 10)
        assert loaded.status_code == 200, loaded.text
        report = loaded.json()
        assert report["state"] == "ready" and report["port"] == moved["port"]
        assert report["pid"] == served.process("b").pid != old_pid


async def test_an_unload_under_way_when_a_reload_removes_the_model_answers_unloaded(
    tmp_path: Path,
) -> None:
    a, b = model(tmp_path, "a", on_demand=True), model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b})
    async with served_from(path) as served:
        await served.ready("b")
        backend_b = served.app.table.backends["b"]
        async with held_busy(served, "b"):
            unloading = post(served, "/v1/backends/b/unload")
            await eventually(lambda: not backend_b.open, 5, "the unload under way")
            write_config(path, {"a": a})
            reloading = reload(served)
            await eventually(lambda: served.app.reloader.busy, 5, "the reload under way")
        assert (await reloading).json()["roles"] == {"a": "unchanged", "b": "removed"}
        unloaded = await asyncio.wait_for(unloading, 10)
        assert unloaded.status_code == 200, unloaded.text
        report = unloaded.json()
        assert report["state"] == "unloaded" and report["pid"] is None
        assert report["model_id"] == "m-b"


async def test_a_model_added_on_the_port_of_a_removed_one_starts_once_that_one_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"b": b})
    async with served_from(path) as served:
        await served.ready("b")
        async with held_busy(served, "b"):
            renamed = {**b, "id": "m-c"}  # a role renamed, its port kept
            write_config(path, {"c": renamed})
            reloading = reload(served)
            await eventually(lambda: "c" in served.supervisor.processes, 5, "c added")
            # Asked for while b still holds the port: it waits for b to stop.
            early = post(served, "/v1/chat/completions", chat("m-c", "early"))
            await eventually(lambda: waiting_for(served, "c") == 1, 5, "c's request")
            assert served.process("c").state == "stopped"
        answer = await reloading
        assert answer.json()["roles"] == {"c": "added", "b": "removed"}
        assert answer.json()["launch"]["c"] in ("starting", "ready")
        reply = await asyncio.wait_for(early, 10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "echo: early"
        assert not [m for m in caplog.messages if "already in use" in m]


async def test_a_request_waiting_for_a_removed_model_is_404_without_retry_after(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    b, c = model(tmp_path, "b", on_demand=True), model(tmp_path, "c", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b, "c": c}, max_loaded_models=1)
    async with served_from(path) as served:
        await served.ready("a")
        async with held_busy(served, "a"):
            for_b = post(served, "/v1/chat/completions", chat("m-b"))
            for_c = post(served, "/v1/chat/completions", chat("m-c", "renamed"))
            await eventually(lambda: waiting_for(served, "b") == 1, 5, "b's request")
            await eventually(lambda: waiting_for(served, "c") == 1, 5, "c's request")
            # b is gone; c's model is served by another role from now on.
            write_config(path, {"a": a, "d": c}, max_loaded_models=1)
            answer = await served.client.post("/admin/reload")
            assert answer.status_code == 200, answer.text
            gone = await asyncio.wait_for(for_b, 5)
            assert gone.status_code == 404, gone.text
            assert gone.json()["error"]["code"] == "model_not_found"
            assert "removed from the config by a reload" in gone.json()["error"]["message"]
            assert "retry-after" not in gone.headers
        reply = await asyncio.wait_for(for_c, 10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "echo: renamed"
        assert served.process("d").state == "ready" and "c" not in served.supervisor.processes


async def test_control_calls_for_a_model_a_reload_removes_while_it_drains(
    tmp_path: Path,
) -> None:
    b, c = model(tmp_path, "b"), model(tmp_path, "c", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"b": b, "c": c})
    async with served_from(path) as served:
        await served.ready("b")
        async with held_busy(served, "b"):
            write_config(path, {"c": c})
            reloading = reload(served)
            await eventually(lambda: "b" not in served.app.table.backends, 5, "table switched")
            assert "b" in served.supervisor.processes  # still draining its stream
            unloading = post(served, "/v1/backends/b/unload")  # answers once b has stopped
            for action in ("load", "restart"):
                refused = await asyncio.wait_for(served.client.post(f"/v1/backends/b/{action}"), 5)
                assert refused.status_code == 404, refused.text
                error = refused.json()["error"]
                assert error["code"] == "role_not_found"
                assert error["message"] == "'b' was removed from the config by a reload"
            assert not unloading.done()
        assert (await reloading).status_code == 200
        unloaded = await asyncio.wait_for(unloading, 10)
        assert unloaded.status_code == 200, unloaded.text
        report = unloaded.json()
        assert report["status"] == report["state"] == "unloaded" and report["pid"] is None
        assert report["model_id"] == "m-b"


async def test_a_queued_request_a_reload_moves_to_an_unusable_server_is_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `slm-server router` reloads a file whose openai key is not set (a warning there):
    # a request waiting for a slot of the model's old backend must not go on to it.
    with running_fake_backend() as fake:
        elsewhere = {"base_url": f"{fake.url}/v1", "api_key_env": "SLM_TEST_KEY_NOT_SET"}
        refused = await queued_then_moved(tmp_path, fake, elsewhere, default_timeout=30)
    assert refused.status_code == 503, refused.text
    message = refused.json()["error"]["message"]
    assert message.startswith("'d' (m-b at ")
    # The variable is named in the router's log only: a key pasted as its name stays there.
    assert "cannot be used: its upstream key is not configured" in message
    assert "SLM_TEST_KEY_NOT_SET" not in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_model_a_reload_moves_elsewhere_is_served_there_while_its_old_process_stops(
    tmp_path: Path,
) -> None:
    b = model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"b": b})
    # Its old server takes the whole stop grace to go.
    launcher = Launcher({"b": ["--ignore-sigterm"]})
    with running_fake_backend() as remote:
        async with served_from(path, launcher) as served:
            await served.ready("b")
            old = served.process("b")
            elsewhere = {
                "id": "m-b",
                "backend": "openai",
                "base_url": f"{remote.url}/v1",
                "default_timeout": 30,
            }
            write_config(path, {"b": elsewhere})
            reloading = reload(served)
            await eventually(lambda: old.state == "stopping", 5, "the old process stopping")
            assert served.process("b") is old  # forgotten only once stopped
            reply = await asyncio.wait_for(
                served.client.post("/v1/chat/completions", json=chat("m-b", "moved")), 5
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "echo: moved"
            assert remote.stats()["requests"] == 1
            health = (await served.client.get("/v1/backends/health")).json()["b"]
            assert health["status"] == "healthy" and "state" not in health, health
            assert old.state == "stopping"  # all this while the old one still stops
            assert (await asyncio.wait_for(reloading, 10)).status_code == 200


async def test_the_deadline_of_a_request_a_reload_moves_names_the_backend_it_went_to(
    tmp_path: Path,
) -> None:
    with running_fake_backend() as fake, running_fake_backend() as silent:
        silent.control(hang=True)  # its answer never comes: the deadline ends the request
        elsewhere = {"base_url": f"{silent.url}/v1"}
        timed_out = await queued_then_moved(tmp_path, fake, elsewhere, default_timeout=3)
    assert timed_out.status_code == 504, timed_out.text
    message = timed_out.json()["error"]["message"]
    assert message.startswith(f"'d' (m-b at {silent.url}/v1): its default_timeout of 3s"), message


async def queued_then_moved(
    tmp_path: Path, fake: FakeBackend, elsewhere: dict[str, Any], default_timeout: float
) -> httpx.Response:
    """The answer to a request queued behind a stream on ``b`` (served by ``fake``, one
    slot), once a reload has moved ``m-b`` to an openai entry ``d`` with ``elsewhere``'s
    fields; `slm-server router` style: the router runs no backend."""
    b = entry("m-b", fake.port, max_concurrency=1, default_timeout=default_timeout)
    path = write_config(tmp_path / "models.yaml", {"b": b})
    app = RouterApp(load_config(path))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        fake.control(chunk_delay=0.05, chunks=100_000)
        request = {**chat("m-b"), "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=request) as stream:
            assert stream.status_code == 200
            backend = app.table.backends["b"]
            queued = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat("m-b", "queued"))
            )
            await eventually(lambda: backend.queued == 1, 5, "a request queued for b")
            d = {"id": "m-b", "backend": "openai", "default_timeout": default_timeout}
            write_config(path, {"d": {**d, **elsewhere}})
            answer = await client.post("/admin/reload")
            assert answer.json()["roles"] == {"d": "added", "b": "removed"}
        return await asyncio.wait_for(queued, 10)
