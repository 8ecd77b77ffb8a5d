"""``POST /v1/backends/{role}/load``, ``/unload`` and ``/restart``, as an operator uses them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from config_builder import make_config
from net import eventually
from on_demand_serving import Launcher, chat, model, serving
from slm_server.router.app import RouterApp
from slm_server.router.backend_control import as_unloaded, control_target


@pytest.fixture(autouse=True)
def scheduler_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="slm_server")


def test_control_paths_name_a_role_and_an_action() -> None:
    assert control_target("/v1/backends/chat/load") == ("chat", "load")
    assert control_target("/v1/backends/chat/unload") == ("chat", "unload")
    assert control_target("/v1/backends/health") is None
    assert control_target("/v1/backends//load") is None
    assert control_target("/v1/backends/chat/restart") == ("chat", "restart")
    assert control_target("/v1/backends/chat/reboot") is None


def test_the_unload_answer_is_the_role_as_stopped_even_if_started_again_since() -> None:
    starting: dict[str, Any] = {"status": "unreachable", "error": "refused", "state": "starting"}
    starting |= {"pid": 42, "memory_mb": 12, "reason": "starting", "model_id": "m"}
    assert as_unloaded(starting) == {
        "status": "unloaded",
        "state": "unloaded",
        "pid": None,
        "memory_mb": None,
        "model_id": "m",
    }
    already = {"status": "unloaded", "state": "unloaded", "pid": None}
    assert as_unloaded(already) == already


async def test_unload_lets_the_request_in_flight_finish_then_stops_the_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = Launcher({"chat": ["--response-delay", "1"]})
    async with serving(tmp_path, {"chat": model("chat", on_demand=False)}, launcher) as served:
        pid = await served.ready("chat")
        request = asyncio.create_task(
            served.client.post("/v1/chat/completions", json=chat("m-chat"))
        )
        work = served.app.table.backends["chat"]
        await eventually(lambda: work.in_flight == 1, 5, "the request in flight")
        unload = await served.client.post("/v1/backends/chat/unload")
        assert request.done()  # the unload waited for it
        response = await request
        assert response.status_code == 200, response.text
        assert unload.status_code == 200, unload.text
        report = unload.json()
        assert report["state"] == "unloaded" and report["status"] == "unloaded"
        assert report["pid"] is None and report["memory_mb"] is None
        assert not psutil.pid_exists(pid)
        assert "unloading chat on request (1 in flight)" in caplog.messages
        # Unloading what is unloaded: nothing to do, said at once.
        began = time.monotonic()
        again = await served.client.post("/v1/backends/chat/unload")
        assert again.status_code == 200 and again.json()["state"] == "unloaded"
        assert time.monotonic() - began < 1


async def test_load_starts_an_unloaded_model_and_leaves_a_loaded_one_as_it_is(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, {"chat": model("chat")}) as served:
        assert (await served.health("chat"))["state"] == "unloaded"
        loaded = await served.client.post("/v1/backends/chat/load")
        assert loaded.status_code == 200, loaded.text
        report = loaded.json()
        assert report["state"] == "ready" and report["status"] == "healthy"
        assert psutil.pid_exists(report["pid"])
        again = await served.client.post("/v1/backends/chat/load")
        assert again.status_code == 200 and again.json()["pid"] == report["pid"]


async def test_control_of_an_unknown_role_is_404_and_other_methods_405(tmp_path: Path) -> None:
    async with serving(tmp_path, {"chat": model("chat")}) as served:
        for action in ("load", "unload", "restart"):
            missing = await served.client.post(f"/v1/backends/nope/{action}")
            assert missing.status_code == 404
            error = missing.json()["error"]
            assert error["code"] == "role_not_found" and "chat" in error["message"]
            wrong = await served.client.get(f"/v1/backends/chat/{action}")
            assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert (await served.health("chat"))["state"] == "unloaded"


async def test_a_router_that_does_not_run_its_backends_cannot_load_them() -> None:
    app = RouterApp(make_config({"chat": model("chat")}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        response = await client.post("/v1/backends/chat/load")
    await app.aclose()
    assert response.status_code == 400
    assert "does not run its backends" in response.json()["error"]["message"]


async def test_restart_lets_the_request_in_flight_finish_then_starts_a_new_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = Launcher({"chat": ["--response-delay", "1"]})
    async with serving(tmp_path, {"chat": model("chat", on_demand=False)}, launcher) as served:
        pid = await served.ready("chat")
        request = asyncio.create_task(
            served.client.post("/v1/chat/completions", json=chat("m-chat"))
        )
        work = served.app.table.backends["chat"]
        await eventually(lambda: work.in_flight == 1, 5, "the request in flight")
        restarted = await served.client.post("/v1/backends/chat/restart")
        assert request.done()  # the restart waited for it
        assert (await request).status_code == 200
        assert restarted.status_code == 200, restarted.text
        report = restarted.json()
        assert report["state"] == "ready" and report["status"] == "healthy"
        assert report["pid"] != pid and psutil.pid_exists(report["pid"])
        assert not psutil.pid_exists(pid)
        answered = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert answered.status_code == 200, answered.text
        assert "unloading chat on request (1 in flight)" in caplog.messages


async def test_restart_starts_a_model_that_was_not_running(tmp_path: Path) -> None:
    async with serving(tmp_path, {"chat": model("chat")}) as served:
        assert (await served.health("chat"))["state"] == "unloaded"
        restarted = await served.client.post("/v1/backends/chat/restart")
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["state"] == "ready"
