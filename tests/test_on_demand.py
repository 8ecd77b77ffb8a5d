"""On-demand loading under a memory budget, scenario by scenario, with fake backends.

The router runs in process (its scheduler, supervisor and real backend subprocesses);
the scenarios that need a real client connection to come and go are in
test_on_demand_served.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import psutil
import pytest

from net import eventually
from on_demand_serving import POLICY, Launcher, Served, chat, model, serving

SCHEDULER = "slm_server.scheduler.owner"


def said(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    """The scheduler's log lines that begin with ``start``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SCHEDULER and r.getMessage().startswith(start)
    ]


@pytest.fixture(autouse=True)
def scheduler_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="slm_server")


async def unloading(served: Served, role: str) -> asyncio.Task[httpx.Response]:
    """An unload call under way: returned once ``role`` is being stopped."""
    call = asyncio.create_task(served.client.post(f"/v1/backends/{role}/unload"))
    process = served.process(role)
    await eventually(lambda: process.state == "stopping", 5, f"{role} to be stopping")
    return call


async def test_a_request_arriving_while_its_model_is_being_stopped_is_served_by_a_fresh_start(
    tmp_path: Path,
) -> None:
    launcher = Launcher({"chat": ["--ignore-sigterm"]})  # its stop takes the whole grace
    async with serving(tmp_path, {"chat": model("chat", on_demand=False)}, launcher) as served:
        old = await served.ready("chat")
        unload = await unloading(served, "chat")
        response = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
        unloaded = await unload
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        assert not psutil.pid_exists(old)
        report = await served.health("chat")
        assert report["state"] == "ready" and report["pid"] not in (None, old)


async def test_load_during_an_unload_waits_for_the_stop_then_starts_it_again(
    tmp_path: Path,
) -> None:
    launcher = Launcher({"chat": ["--ignore-sigterm"]})
    async with serving(tmp_path, {"chat": model("chat", on_demand=False)}, launcher) as served:
        old = await served.ready("chat")
        unload = await unloading(served, "chat")
        load = await served.client.post("/v1/backends/chat/load")
        unloaded = await unload
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "unloaded", unloaded.json()
        assert load.status_code == 200, load.text
        assert load.json()["state"] == "ready" and load.json()["pid"] not in (None, old)
        assert not psutil.pid_exists(old)
        assert (await served.health("chat"))["state"] == "ready"
        assert await served.statuses() == {"m-chat": "loaded"}


async def test_an_evicted_backend_that_ignores_sigterm_is_killed_before_the_newcomer_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {"old": model("old", on_demand=False), "new": model("new")}
    launcher = Launcher({"old": ["--ignore-sigterm"]})
    async with serving(tmp_path, models, launcher, memory_budget_gb=1.5) as served:
        old_pid = await served.ready("old")
        old, new = served.process("old"), served.process("new")
        overlaps: list[tuple[int, int]] = []

        async def watch_memory() -> None:  # both running at once would exceed the budget
            while True:
                if old.pid is not None and new.pid is not None:
                    overlaps.append((old.pid, new.pid))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_memory())
        began = time.monotonic()
        try:
            response = await served.client.post("/v1/chat/completions", json=chat("m-new"))
        finally:
            watcher.cancel()
        assert response.status_code == 200, response.text
        assert time.monotonic() - began >= served.supervisor.policy.stop_grace_s
        assert overlaps == []
        assert not psutil.pid_exists(old_pid)
        assert said(caplog, "evicted old (")[0].endswith("to make room for new (est. 1.0 GB)")
        assert len(said(caplog, "starting new (")) == 1
        assert (await served.health("old"))["state"] == "unloaded"


async def test_a_model_idle_past_its_ttl_is_stopped_and_the_next_request_starts_it_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path, {"chat": model("chat", idle_ttl_s=0.5)}) as served:
        assert (await served.client.post("/v1/chat/completions", json=chat("m-chat"))).is_success
        pid = served.process("chat").pid
        await eventually(lambda: served.process("chat").state == "stopped", 5, "the TTL")
        assert pid is not None and not psutil.pid_exists(pid)
        assert (await served.health("chat"))["state"] == "unloaded"
        assert await served.statuses() == {"m-chat": "unloaded"}
        (line,) = said(caplog, "stopped chat (")
        assert re.fullmatch(r"stopped chat \(idle [01] s, idle_ttl_s 0\.5, .*\)", line), line
        response = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert response.status_code == 200, response.text
        assert len(said(caplog, "starting chat (")) == 2


async def test_requests_arriving_around_the_ttl_expiry_are_all_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ttl_s = 0.3
    async with serving(tmp_path, {"chat": model("chat", idle_ttl_s=ttl_s)}) as served:
        assert (await served.client.post("/v1/chat/completions", json=chat("m-chat"))).is_success
        for offset in (-0.02, -0.005, 0.0, 0.005, 0.02, 0.0):
            last_used = served.app.table.backends["chat"].last_used
            assert last_used is not None
            await asyncio.sleep(max(0.0, last_used + ttl_s + offset - time.monotonic()))
            response = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
            assert response.status_code == 200, (offset, response.text)
        # Whichever side of the expiry each fell on, some were served by a fresh start.
        assert len(said(caplog, "starting chat (")) >= 2


async def test_a_model_larger_than_the_budget_is_refused_at_once_without_a_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {"big": model("big", memory_gb=4)}
    async with serving(tmp_path, models, memory_budget_gb=2) as served:
        began = time.monotonic()
        response = await served.client.post("/v1/chat/completions", json=chat("m-big"))
        assert time.monotonic() - began < 1
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "insufficient_memory" and error["type"] == "server_error"
        assert "4.0 GB" in error["message"] and "2.0 GB" in error["message"]
        load = await served.client.post("/v1/backends/big/load")
        assert load.status_code == 503
        assert load.json()["error"]["code"] == "insufficient_memory"
        assert served.process("big").pid is None
        assert said(caplog, "starting big") == []
        assert (await served.health("big"))["state"] == "unloaded"


async def test_a_backend_that_cannot_start_is_refused_during_its_cooldown_but_loaded_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = Launcher()
    launcher.broken.add("chat")
    cooldown_s = POLICY.retry_failed_after_s
    async with serving(tmp_path, {"chat": model("chat")}, launcher) as served:
        first = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert first.status_code == 503, first.text
        assert first.json()["error"]["code"] == "backend_unavailable"
        assert "gguf: bad magic" in first.json()["error"]["message"]
        assert 1 <= int(first.headers["retry-after"]) <= cooldown_s
        assert await served.statuses() == {"m-chat": "failed"}
        # A load call right after the failure tries again at once (and fails again).
        load = await served.client.post("/v1/backends/chat/load")
        assert load.status_code == 503, load.text
        assert load.json()["error"]["code"] == "backend_unavailable"
        assert "retry-after" in load.headers
        assert len(said(caplog, "starting chat (")) == 2
        began = time.monotonic()
        again = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert time.monotonic() - began < 1
        assert again.status_code == 503 and again.json()["error"]["code"] == "backend_unavailable"
        assert 1 <= int(again.headers["retry-after"]) <= cooldown_s
        assert len(said(caplog, "starting chat (")) == 2  # no start tried within the cooldown
        launcher.broken.clear()  # the model file was fixed: a load call starts it at once
        load = await served.client.post("/v1/backends/chat/load")
        assert load.status_code == 200, load.text
        assert load.json()["state"] == "ready"
        response = await served.client.post("/v1/chat/completions", json=chat("m-chat"))
        assert response.status_code == 200, response.text


async def test_a_request_for_another_model_is_served_before_later_requests_for_the_busy_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {"a": model("a", on_demand=False), "b": model("b")}
    launcher = Launcher({"a": ["--chunks", "15", "--chunk-delay", "0.1"]})
    async with serving(tmp_path, models, launcher, max_loaded_models=1) as served:
        await served.ready("a")
        finished: dict[str, float] = {}

        async def ask(name: str, model_id: str, stream: bool = False) -> int:
            body = {**chat(model_id), "stream": stream}
            response = await served.client.post("/v1/chat/completions", json=body)
            finished[name] = time.monotonic()
            return response.status_code

        busy = asyncio.create_task(ask("a-stream", "m-a", stream=True))
        await eventually(lambda: served.app.table.backends["a"].in_flight == 1, 5, "a busy")
        b = asyncio.create_task(ask("b", "m-b"))
        await eventually(lambda: bool(said(caplog, "a: new requests wait for b")), 5, "b's turn")
        assert (await served.health("b"))["queued"] == 1  # waiting for memory counts too
        later = [asyncio.create_task(ask(f"a-{i}", "m-a")) for i in range(3)]
        scheduler = served.app.scheduler
        assert scheduler is not None
        await eventually(lambda: scheduler.waiting("a") == 3, 5, "a's later ones")
        report = await served.health("a")
        assert (report["in_flight"], report["queued"], report["idle_since"]) == (1, 3, None)
        statuses = await asyncio.wait_for(asyncio.gather(busy, b, *later), 30)
        assert statuses == [200] * 5
        assert finished["a-stream"] < finished["b"] < min(finished[f"a-{i}"] for i in range(3))
        assert len(said(caplog, "starting a (")) == 1  # a came back for the later ones
        assert len(said(caplog, "starting b (")) == 1
        assert said(caplog, "evicted a (") and said(caplog, "evicted b (")


async def test_a_model_loaded_by_hand_is_idle_from_its_load(tmp_path: Path) -> None:
    async with serving(tmp_path, {"b": model("b", idle_ttl_s=600)}) as served:
        assert "reason" not in await served.health("b")  # unloaded: nothing is wrong with it
        before = time.time()
        loaded = await served.client.post("/v1/backends/b/load")
        assert loaded.status_code == 200, loaded.text
        report = await served.health("b")
        assert report["last_used"] is None  # no request yet
        assert before <= report["idle_since"] <= time.time()  # its TTL runs from the load


async def test_models_lists_every_model_with_whether_it_is_loaded(tmp_path: Path) -> None:
    models = {"a": model("a", on_demand=False), "b": model("b")}
    async with serving(tmp_path, models) as served:
        await served.ready("a")
        assert await served.statuses() == {"m-a": "loaded", "m-b": "unloaded"}
        report = await served.health("b")
        assert report["state"] == "unloaded" and report["status"] == "unloaded"
        assert report["on_demand"] is True and report["memory_mb"] is None
        assert report["memory_estimate_mb"] == 1000


async def test_a_request_whose_deadline_passes_while_waiting_for_memory_gets_504_and_frees_the_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = {
        "a": model("a", on_demand=False, max_concurrency=2),
        "b": model("b", default_timeout=0.5),
    }
    launcher = Launcher({"a": ["--response-delay", "2"]})
    async with serving(tmp_path, models, launcher, max_loaded_models=1) as served:
        await served.ready("a")
        work = served.app.table.backends["a"]
        busy = asyncio.create_task(served.client.post("/v1/chat/completions", json=chat("m-a")))
        await eventually(lambda: work.in_flight == 1, 5, "a busy")
        late = await served.client.post("/v1/chat/completions", json=chat("m-b"))
        assert late.status_code == 504, late.text
        error = late.json()["error"]
        assert error["code"] == "backend_timeout"
        assert "waiting for memory held by other models" in error["message"]
        assert not busy.done()
        # b's turn is over: a takes new requests again while its first one still runs.
        second = asyncio.create_task(served.client.post("/v1/chat/completions", json=chat("m-a")))
        await eventually(lambda: work.in_flight == 2, 5, "a to take a second request")
        assert (await busy).status_code == 200 and (await second).status_code == 200
        assert said(caplog, "starting b") == []
        assert (await served.health("b"))["state"] == "unloaded"


async def test_health_counts_each_waiting_request_once(tmp_path: Path) -> None:
    launcher = Launcher({"b": ["--response-delay", "1"]})
    async with serving(tmp_path, {"b": model("b")}, launcher) as served:
        asking = [
            asyncio.create_task(served.client.post("/v1/chat/completions", json=chat("m-b")))
            for _ in range(3)
        ]
        work = served.app.table.backends["b"]
        await eventually(lambda: work.in_flight == 1 and work.queued == 2, 10, "b busy")
        report = await served.health("b")
        assert (report["in_flight"], report["queued"]) == (1, 2)  # 3 requests, 3 counted
        responses = await asyncio.wait_for(asyncio.gather(*asking), 30)
        assert [r.status_code for r in responses] == [200] * 3
