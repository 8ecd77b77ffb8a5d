"""Config reload through ``POST /admin/reload``, in process, over real fake backends.

Each test serves a config file, rewrites it, reloads, and checks what a client of the
router sees: which models answer, which processes run (by PID), that a stream in flight
on a model the reload leaves alone ends intact, and the reload's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config_builder import entry
from net import eventually, free_port
from on_demand_serving import Launcher, Served, chat
from reload_serving import model, served_from, write_config
from router_served import served as router_served
from slm_server.config import load_config
from slm_server.router.app import RouterApp
from slm_server.serving import launcher_for

CHUNKS = 12


def streamed(model_id: str) -> dict[str, Any]:
    return {**chat(model_id), "stream": True}


@contextlib.asynccontextmanager
async def stream_open(served: Served, model_id: str) -> AsyncIterator[httpx.Response]:
    """A chat stream for ``model_id``, its first piece already arrived."""
    async with served.client.stream("POST", "/v1/chat/completions", json=streamed(model_id)) as r:
        assert r.status_code == 200
        yield r


async def rest_of(response: httpx.Response) -> str:
    """The stream's whole body from here on."""
    return "".join([text async for text in response.aiter_text()])


async def fake_control(served: Served, role: str, **switches: object) -> None:
    """Change how ``role``'s fake backend answers (see fake_backend's switches)."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{served.backend_url(role)}/_fake/control", json=switches)
        assert response.status_code == 200


async def hold_streams(served: Served, role: str) -> None:
    """``role``'s streams stop after their first piece until ``release_streams``."""
    await fake_control(served, role, hold_streams=True, chunks=CHUNKS)


async def release_streams(served: Served, role: str) -> None:
    await fake_control(served, role, hold_streams=False)


async def backend_in_flight(served: Served, role: str) -> int:
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{served.backend_url(role)}/_fake/stats")).json()
    return int(stats["in_flight"])


async def reload(served: Served, **headers: str) -> httpx.Response:
    return await served.client.post("/admin/reload", headers=headers)


def requests_total(text: str, model_id: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "slm_requests_total" and sample.labels["model"] == model_id:
                total += sample.value
    return total


async def test_a_reload_keeps_unchanged_models_running_and_removes_and_adds_others(
    tmp_path: Path,
) -> None:
    a, b, c = (model(tmp_path, role) for role in "abc")
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b})
    async with served_from(path) as served:
        pid_a, pid_b = await served.ready("a"), await served.ready("b")
        assert (await served.client.post("/v1/chat/completions", json=chat("m-a"))).is_success
        await hold_streams(served, "a")
        async with stream_open(served, "m-a") as stream:
            write_config(path, {"a": a, "c": c})
            answer = await reload(served)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "roles": {"a": "unchanged", "c": "added", "b": "removed"},
                "router": {"changed": [], "restart_needed": []},
                "warnings": [],
                "launch": {"c": answer.json()["launch"]["c"]},
            }
            assert answer.json()["launch"]["c"] in ("starting", "ready")
            assert await backend_in_flight(served, "a") == 1  # the stream went on throughout
            await release_streams(served, "a")
            body = await rest_of(stream)
        assert body.count('"content"') >= CHUNKS and body.rstrip().endswith("data: [DONE]")
        assert served.process("a").pid == pid_a
        assert not psutil.pid_exists(pid_b) or psutil.Process(pid_b).status() == "zombie"
        assert "b" not in served.supervisor.processes
        gone = await served.client.post("/v1/chat/completions", json=chat("m-b"))
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
        await served.ready("c")
        added = await served.client.post("/v1/chat/completions", json=chat("m-c", "new"))
        assert added.status_code == 200 and added.json()["choices"][0]["message"]["content"]
        models = await served.statuses()
        assert models == {"m-a": "loaded", "m-c": "loaded"}
        # The counts of the model left alone go on; the new one has series of its own.
        metrics = (await served.client.get("/metrics")).text
        assert requests_total(metrics, "m-a") == 2
        assert requests_total(metrics, "m-c") == 1


async def test_a_file_with_errors_changes_nothing_and_the_answer_lists_them(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        pid = await served.ready("a")
        broken = {**a, "port": "not a port", "contex_length": 4096}
        write_config(path, {"a": broken, "b": model(tmp_path, "b")})
        answer = await reload(served)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_config"
        assert len(error["problems"]) == 2
        assert any("port" in line for line in error["problems"])
        assert any("contex_length" in line for line in error["problems"])
        assert all(line in error["message"] for line in error["problems"])
        assert served.process("a").pid == pid
        assert await served.statuses() == {"m-a": "loaded"}


async def test_a_changed_model_drains_then_restarts_and_requests_meanwhile_wait(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        old_pid = await served.ready("a")
        old_backend = served.app.table.backends["a"]
        await hold_streams(served, "a")
        async with stream_open(served, "m-a") as stream:
            moved = model(tmp_path, "a")  # another port: a new process
            write_config(path, {"a": moved})
            reloading = asyncio.create_task(reload(served))
            await eventually(
                lambda: served.app.table.backends["a"] is not old_backend, 5, "the switch"
            )
            arriving = asyncio.create_task(
                served.client.post("/v1/chat/completions", json=chat("m-a", "later"))
            )
            assert not reloading.done()  # it waits for the stream the old process serves
            await release_streams(served, "a")
            body = await rest_of(stream)  # the old process finishes what it began
            assert body.rstrip().endswith("data: [DONE]")
            answer = await reloading
        assert answer.status_code == 200 and answer.json()["roles"] == {"a": "replaced"}
        later = await arriving
        assert later.status_code == 200, later.text
        assert later.json()["choices"][0]["message"]["content"] == "echo: later"
        new_pid = served.process("a").pid
        assert new_pid is not None and new_pid != old_pid
        assert served.process("a").entry.port == moved["port"]
        assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"


async def test_router_side_fields_change_without_restarting_the_backend(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        pid = await served.ready("a")
        backend = served.app.table.backends["a"]
        await hold_streams(served, "a")
        async with stream_open(served, "m-a") as stream:
            write_config(path, {"a": {**a, "idle_ttl_s": 600, "default_timeout": 45}})
            answer = await reload(served)
            assert answer.json()["roles"] == {"a": "updated"}
            await release_streams(served, "a")
            body = await rest_of(stream)
        assert body.rstrip().endswith("data: [DONE]")
        assert served.process("a").pid == pid
        assert served.app.table.backends["a"] is backend  # its slots and queue carried over
        health = await served.health("a")
        assert health["idle_ttl_s"] == 600 and health["state"] == "ready"
        assert served.app.table.lookup("m-a", "/v1/chat/completions").entry.default_timeout == 45


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_api_keys_change_at_once_and_only_an_admin_key_may_reload(tmp_path: Path) -> None:
    a = model(tmp_path, "a")
    admin = {"name": "ops", "key_sha256": _sha("ops-key"), "admin": True}
    user = {"name": "alice", "key_sha256": _sha("alice-key")}
    path = write_config(tmp_path / "models.yaml", {"a": a}, api_keys=[admin, user])

    def bearer(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async with served_from(path) as served:
        await served.ready("a")
        refused = await served.client.post("/admin/reload", headers=bearer("alice-key"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "admin_required"
        assert (await served.client.post("/admin/reload")).status_code == 401

        newcomer = {"name": "bob", "key_sha256": _sha("bob-key"), "models": ["m-a"]}
        write_config(path, {"a": a}, api_keys=[admin, newcomer])
        answer = await served.client.post("/admin/reload", headers=bearer("ops-key"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["router"]["changed"] == ["api_keys"]
        old = await served.client.post(
            "/v1/chat/completions", json=chat("m-a"), headers=bearer("alice-key")
        )
        assert old.status_code == 401
        new = await served.client.post(
            "/v1/chat/completions", json=chat("m-a"), headers=bearer("bob-key")
        )
        assert new.status_code == 200


async def test_one_reload_at_a_time(tmp_path: Path) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b})
    async with served_from(path) as served:
        await served.ready("a")
        await served.ready("b")
        await hold_streams(served, "b")
        async with stream_open(served, "m-b") as stream:
            write_config(path, {"a": a})
            first = asyncio.create_task(reload(served))  # waits for b's stream to end
            await eventually(lambda: served.app.reloader.busy, 5, "the first reload")
            second = await reload(served)
            assert second.status_code == 409
            assert second.json()["error"]["code"] == "reload_in_progress"
            assert not first.done()
            await release_streams(served, "b")
            body = await rest_of(stream)  # a removed model finishes what it began
        assert body.rstrip().endswith("data: [DONE]")
        answer = await first
        assert answer.status_code == 200 and answer.json()["roles"]["b"] == "removed"


async def test_a_removed_on_demand_model_that_never_ran_is_simply_gone(tmp_path: Path) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b})
    async with served_from(path, Launcher()) as served:
        await served.ready("a")
        write_config(path, {"a": a, "c": model(tmp_path, "c", on_demand=True)})
        answer = await reload(served)
        assert answer.json()["roles"] == {"a": "unchanged", "c": "added", "b": "removed"}
        assert await served.statuses() == {"m-a": "loaded", "m-c": "unloaded"}
        # An on-demand model added by the reload starts with its first request.
        reply = await served.client.post("/v1/chat/completions", json=chat("m-c"))
        assert reply.status_code == 200, reply.text
        assert json.loads(reply.text)["choices"][0]["message"]["content"] == "echo: hi"


async def test_backends_started_after_a_reload_never_see_its_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLM_KEY_NEW", "new-key")
    a = model(tmp_path, "a", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        served.supervisor.launcher_for = launcher_for  # as `serve` sets it
        keys = [{"name": "new", "key_env": "SLM_KEY_NEW", "admin": True}]
        write_config(path, {"a": a}, api_keys=keys)
        answer = await reload(served, authorization="Bearer -")  # no keys yet: any goes
        assert answer.status_code == 200, answer.text
        spec = served.supervisor.launcher("a", served.app.config.models["a"])
        assert "SLM_KEY_NEW" in spec.env_removed


async def test_a_model_added_in_place_of_a_removed_one_starts_once_there_is_room(
    tmp_path: Path,
) -> None:
    a, c = model(tmp_path, "a"), model(tmp_path, "c")
    path = write_config(tmp_path / "models.yaml", {"a": a}, memory_budget_gb=1.5)
    async with served_from(path) as served:
        await served.ready("a")
        write_config(path, {"c": c}, memory_budget_gb=1.5)
        answer = await reload(served)
        assert answer.json()["roles"] == {"c": "added", "a": "removed"}
        # Both at once would exceed the budget: c starts once a has stopped, unasked.
        await served.ready("c")


async def test_a_router_without_backends_reloads_a_file_whose_models_live_elsewhere(
    tmp_path: Path,
) -> None:
    elsewhere = entry("m-far", free_port(), model_path="/nowhere/far.gguf")
    path = write_config(tmp_path / "models.yaml", {"far": elsewhere})
    app = RouterApp(load_config(path))
    async with router_served(app) as url, httpx.AsyncClient(base_url=url) as client:
        near = entry("m-near", free_port(), model_path="/nowhere/near.gguf")
        write_config(path, {"far": elsewhere, "near": near})
        answer = await client.post("/admin/reload")
        assert answer.status_code == 200, answer.text
        models = (await client.get("/v1/models")).json()["data"]
        assert {m["id"] for m in models} == {"m-far", "m-near"}


async def test_a_router_without_backends_warns_of_a_server_elsewhere_it_cannot_reach(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path / "models.yaml", {})
    app = RouterApp(load_config(path))
    async with router_served(app) as url, httpx.AsyncClient(base_url=url) as client:
        keyless = {
            "id": "far",
            "backend": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "default_timeout": 30,
            "api_key_env": "NOT_SET_ANYWHERE",
        }
        write_config(path, {"far": keyless})
        answer = await client.post("/admin/reload")
        assert answer.status_code == 200, answer.text
        [warning] = answer.json()["warnings"]
        assert "NOT_SET_ANYWHERE (api_key_env) is not set" in warning
        assert "restart the server" in warning  # a reload reads no variable anew


async def test_a_model_no_longer_on_demand_starts_without_a_request(tmp_path: Path) -> None:
    a = model(tmp_path, "a", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        assert await served.statuses() == {"m-a": "unloaded"}
        write_config(path, {"a": {**a, "on_demand": False}})
        answer = await reload(served)
        assert answer.json()["roles"] == {"a": "updated"}
        await served.ready("a")


async def test_the_listening_address_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    a = model(tmp_path, "a", on_demand=True)
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        write_config(path, {"a": a}, port=free_port(), max_queue=2)
        answer = await reload(served)
        assert answer.json()["router"] == {"changed": ["max_queue"], "restart_needed": ["port"]}
        assert (await served.client.get("/health")).status_code == 200  # where it was


async def test_a_smaller_queue_applies_at_once_to_a_model_left_running(tmp_path: Path) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        pid = await served.ready("a")
        write_config(path, {"a": a}, max_queue=0)
        answer = await reload(served)
        assert answer.json()["router"]["changed"] == ["max_queue"]
        await fake_control(served, "a", response_delay=1.0)
        first = asyncio.create_task(served.client.post("/v1/chat/completions", json=chat("m-a")))
        backend = served.app.table.backends["a"]
        await eventually(lambda: backend.in_flight == 1, 5, "the first request in its slot")
        second = await served.client.post("/v1/chat/completions", json=chat("m-a"))
        assert second.status_code == 429 and second.json()["error"]["code"] == "queue_full"
        assert (await first).status_code == 200
        assert served.process("a").pid == pid


async def test_the_dashboard_page_needs_no_key_after_a_reload(tmp_path: Path) -> None:
    a = model(tmp_path, "a", on_demand=True)
    admin = {"name": "ops", "key_sha256": _sha("ops-key"), "admin": True}
    path = write_config(tmp_path / "models.yaml", {"a": a}, api_keys=[admin])
    async with served_from(path) as served:
        assert (await served.client.get("/ui")).status_code == 200
        write_config(path, {"a": a}, api_keys=[admin], max_queue=3)
        answer = await reload(served, authorization="Bearer ops-key")
        assert answer.json()["router"]["changed"] == ["max_queue"]
        page = await served.client.get("/ui")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert (await served.client.get("/v1/models")).status_code == 401  # keys still asked


class Following:
    """A client following a log (``GET /admin/logs/{name}?follow=1``) in the background."""

    def __init__(self, served: Served, name: str, **headers: str) -> None:
        self.text = ""
        self.status: int | None = None
        self._task = asyncio.create_task(self._follow(served, name, headers))

    async def _follow(self, served: Served, name: str, headers: dict[str, str]) -> None:
        url = f"/admin/logs/{name}?follow=1&tail=0"
        async with served.client.stream("GET", url, headers=headers) as response:
            self.status = response.status_code
            async for piece in response.aiter_text():
                self.text += piece

    async def ended(self) -> str:
        """The whole answer, once the server has ended it."""
        await asyncio.wait_for(self._task, 10)
        return self.text

    def stop(self) -> None:
        self._task.cancel()


async def test_a_log_follow_ends_when_the_api_keys_change(tmp_path: Path) -> None:
    a = model(tmp_path, "a")
    old = {"name": "old", "key_sha256": _sha("old-key"), "admin": True}
    new = {"name": "new", "key_sha256": _sha("new-key"), "admin": True}
    path = write_config(tmp_path / "models.yaml", {"a": a}, api_keys=[old])
    async with served_from(path) as served:
        await served.ready("a")
        feed = served.process("a").log.feed
        follow = Following(served, "a", authorization="Bearer old-key")
        try:
            await eventually(lambda: feed.followers == 1, 5, "the follow to begin")
            write_config(path, {"a": a}, api_keys=[new])
            answer = await reload(served, authorization="Bearer old-key")
            assert answer.json()["router"]["changed"] == ["api_keys"]
            served.process("a").log.note("written after the old key was revoked")
            text = await follow.ended()
        finally:
            follow.stop()
        assert follow.status == 200
        assert "written after" not in text
        assert text.splitlines()[-1].endswith(
            "the API keys were changed by a config reload; this log ends here "
            "(follow it again with a key that is still valid)"
        )


async def test_a_log_follow_goes_on_with_the_process_of_a_changed_model(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        old_pid = await served.ready("a")
        old_log = served.process("a").log
        follow = Following(served, "a")
        try:
            await eventually(lambda: old_log.feed.followers == 1, 5, "the follow to begin")
            write_config(path, {"a": model(tmp_path, "a")})  # another port, the same id
            answer = await reload(served)
            assert answer.json()["roles"] == {"a": "replaced"}
            assert await served.ready("a") != old_pid
            assert served.process("a").log is old_log  # one log file, one writer
            served.process("a").log.note("a line of the new process")
            await eventually(lambda: "a line of the new process" in follow.text, 5, "the line")
        finally:
            follow.stop()


async def test_a_log_follow_of_a_removed_model_ends_saying_why(tmp_path: Path) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b")
    path = write_config(tmp_path / "models.yaml", {"a": a, "b": b})
    async with served_from(path) as served:
        await served.ready("b")
        feed = served.process("b").log.feed
        removed, renamed = Following(served, "b"), Following(served, "a")
        try:
            await eventually(lambda: feed.followers == 1, 5, "the follow of b to begin")
            write_config(path, {"a": {**a, "id": "m-a2"}})  # a logs to another file now
            answer = await reload(served)
            assert answer.json()["roles"] == {"a": "replaced", "b": "removed"}
            text = await removed.ended()
            assert text.splitlines()[-1].endswith(
                "b was removed from the config by a reload; this log ends here"
            )
            text = await renamed.ended()
            assert text.splitlines()[-1].endswith(
                "a was changed by a config reload and now logs to m-a2.log; this log ends here"
            )
        finally:
            removed.stop()
            renamed.stop()


async def test_a_reload_refuses_what_check_config_calls_an_error_and_says_its_warnings(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a}, memory_budget_gb=1.5)
    async with served_from(path) as served:
        pid = await served.ready("a")
        write_config(path, {"a": {**a, "memory_gb": 2}}, memory_budget_gb=1.5)
        refused = await reload(served)
        assert refused.status_code == 400, refused.text
        (problem,) = refused.json()["error"]["problems"]
        assert "models.a" in problem and "it can never load" in problem
        assert served.process("a").pid == pid and served.process("a").entry.memory_gb == 1

        write_config(path, {"a": a}, memory_budget_gb=1.5, response_store_ttl_s=60)
        answer = await reload(served)
        assert answer.status_code == 200, answer.text
        (warning,) = answer.json()["warnings"]
        assert warning.startswith("warning: ") and "response_store_ttl_s" in warning


async def test_a_log_follow_opened_without_a_key_ends_once_keys_are_asked_for(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a})
    async with served_from(path) as served:
        await served.ready("a")
        feed = served.process("a").log.feed
        follow = Following(served, "a")
        try:
            await eventually(lambda: feed.followers == 1, 5, "the follow to begin")
            admin = {"name": "ops", "key_sha256": _sha("ops-key"), "admin": True}
            write_config(path, {"a": a}, api_keys=[admin])
            assert (await reload(served)).json()["router"]["changed"] == ["api_keys"]
            text = await follow.ended()
        finally:
            follow.stop()
        assert "the API keys were changed by a config reload" in text.splitlines()[-1]


async def test_the_answer_says_whether_each_new_model_started_and_why_not(
    tmp_path: Path,
) -> None:
    a = model(tmp_path, "a")
    path = write_config(tmp_path / "models.yaml", {"a": a}, memory_budget_gb=2.5)
    async with served_from(path) as served:
        await served.ready("a")
        # 1 GB each, started in config order: b fits beside a, d no more.
        b, c, d = model(tmp_path, "b"), model(tmp_path, "c", on_demand=True), model(tmp_path, "d")
        write_config(path, {"a": a, "b": b, "c": c, "d": d}, memory_budget_gb=2.5)
        answer = await reload(served)
        assert answer.status_code == 200, answer.text
        launch = answer.json()["launch"]
        assert launch["b"] in ("starting", "ready")
        assert launch["c"] == "on demand"
        assert launch["d"] == (
            "deferred: est. 1.0 GB would exceed the memory budget of 2.5 GB (2.0 GB taken)"
        )
        assert set(launch) == {"d", "b", "c"}
