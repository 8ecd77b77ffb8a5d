"""Replicas started here (``replicas: N`` on a command entry running the fake backend),
through a real ``slm-server serve``: loaded ones take the requests, another is loaded
only when they are all busy, and the control endpoints act on the whole group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_backend_proc import SCRIPT
from net import free_port_run
from router_proc import RouterProcess

UPSTREAM = "x-slm-upstream"


def replicated(count: int, *args: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": "gemma",
        "backend": "command",
        "port": free_port_run(count),
        "host": "127.0.0.1",
        "replicas": count,
        "default_timeout": 30,
        "command": [sys.executable, str(SCRIPT), "--port", "{port}", "--host", "{host}", *args],
        **fields,
    }


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    entry = replicated(3, "--response-delay", "0.6", on_demand=True)
    process = RouterProcess({"models": {"gemma": entry}}, tmp_path, command="serve")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def ask(router: RouterProcess) -> str:
    body = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers[UPSTREAM]


def states(router: RouterProcess) -> dict[str, str]:
    return {role: report["state"] for role, report in router.backends().items()}


def test_on_demand_replicas_load_only_when_the_loaded_ones_are_busy(
    router: RouterProcess,
) -> None:
    assert states(router) == {"gemma@0": "unloaded", "gemma@1": "unloaded", "gemma@2": "unloaded"}
    # One at a time: the first loads one replica, which then answers every request.
    assert {ask(router) for _ in range(3)} == {"gemma/0"}
    assert states(router) == {"gemma@0": "ready", "gemma@1": "unloaded", "gemma@2": "unloaded"}
    # Three at once: the loaded one is busy with the first, so the others are loaded.
    with ThreadPoolExecutor(3) as pool:
        upstreams = set(pool.map(lambda _: ask(router), range(3)))
    assert upstreams == {"gemma/0", "gemma/1", "gemma/2"}
    listed = httpx.get(f"{router.url}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["role"], m["replicas"], m["status"]) for m in listed] == [
        ("gemma", "gemma", 3, "loaded")
    ]


def test_the_control_endpoints_act_on_every_replica_of_a_group(router: RouterProcess) -> None:
    loaded = httpx.post(f"{router.url}/v1/backends/gemma/load", timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert {role: r["state"] for role, r in loaded.json()["replicas"].items()} == {
        "gemma@0": "ready",
        "gemma@1": "ready",
        "gemma@2": "ready",
    }
    pids = {role: report["pid"] for role, report in router.backends().items()}
    restarted = httpx.post(f"{router.url}/v1/backends/gemma/restart", timeout=60)
    assert restarted.status_code == 200, restarted.text
    after = router.backends()
    assert all(after[role]["pid"] not in (None, pid) for role, pid in pids.items())
    unloaded = httpx.post(f"{router.url}/v1/backends/gemma/unload", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert set(states(router).values()) == {"unloaded"}
    # One replica on its own, by its role.
    one = httpx.post(f"{router.url}/v1/backends/gemma@1/load", timeout=60)
    assert one.status_code == 200 and one.json()["state"] == "ready"
