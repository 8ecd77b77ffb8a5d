"""The load figures in ``/v1/backends/health``: requests in flight and queued, when a
backend was last used, and its memory measured and estimated; a router on a real socket
owning a fake backend process."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port
from router_served import RawClient, served
from slm_server.backends.memory_estimate import MARGIN_FIXED_BYTES, MARGIN_FRACTION
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.router import load_figures
from slm_server.router.admission import AdmissionGate
from slm_server.router.app import RouterApp
from slm_server.router.routing import Backend
from slm_server.supervisor import RestartPolicy, Supervisor
from slm_server.supervisor.supervisor import Launcher

FAST = RestartPolicy(startup_timeout_s=10, max_start_failures=2, backoff_s=(0.05,), stop_grace_s=2)
CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
MB = 1024 * 1024
WEIGHTS_BYTES = 3 * MB


def launch(role: str, model: ModelEntry) -> LaunchSpec:
    return LaunchSpec([sys.executable, str(SCRIPT), "--port", str(model.port)])


def broken(role: str, model: ModelEntry) -> LaunchSpec:
    return LaunchSpec([sys.executable, "-c", "exit(2)"])


@asynccontextmanager
async def router(
    tmp_path: Path, launcher: Launcher = launch
) -> AsyncIterator[tuple[httpx.AsyncClient, str, int]]:
    """The router owning one fake backend (one request at a time) whose model file has
    no GGUF metadata; yields a client of the router, its URL, and the backend's port."""
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"\0" * WEIGHTS_BYTES)
    port = free_port()
    config = make_config({"chat": entry("m-chat", port, model_path=str(weights))})
    app = RouterApp(config, Supervisor(config, launcher, tmp_path / "logs", FAST))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client, url, port


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/backends/health")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()["chat"]
    return report


async def until(client: httpx.AsyncClient, what: str, **expected: Any) -> dict[str, Any]:
    """The health report once it shows ``expected``; AssertionError after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        report = await health(client)
        if all(report.get(key) == value for key, value in expected.items()):
            return report
        assert time.monotonic() < deadline, f"no {what} within 5 s: {report}"
        await asyncio.sleep(0.02)


async def test_health_counts_a_held_request_and_a_queued_one_then_tells_when_last_used(
    tmp_path: Path,
) -> None:
    async with router(tmp_path) as (client, url, backend_port):
        report = await until(client, "ready backend", state="ready")
        assert (report["in_flight"], report["queued"], report["last_used"]) == (0, 0, None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend_port}") as fake:
            (await fake.post("/_fake/control", json={"hang": True})).raise_for_status()
            holder = await RawClient.post(url, "/v1/chat/completions", json.dumps(CHAT).encode())
            await until(client, "request in flight", in_flight=1, queued=0)
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
            report = await until(client, "request queued", in_flight=1, queued=1)
            assert report["last_used"] is None  # nothing has ended yet
            (await fake.post("/_fake/control", json={"hang": False})).raise_for_status()
        before = time.time()
        await holder.hang_up()  # its slot passes to the waiting request, now answered
        response = await asyncio.wait_for(waiting, 10)
        assert response.status_code == 200, response.text
        report = await until(client, "idle backend", in_flight=0, queued=0)
        assert before <= report["last_used"] <= time.time()


async def test_health_gives_the_memory_measured_and_the_estimate(tmp_path: Path) -> None:
    async with router(tmp_path) as (client, _, _):
        report = await until(client, "ready backend", state="ready")
        # A file without GGUF metadata: its size and the margin, no KV cache.
        expected = (WEIGHTS_BYTES * (1 + MARGIN_FRACTION) + MARGIN_FIXED_BYTES) / 10**6
        assert report["memory_estimate_mb"] == round(expected)
        # A Python process serving HTTP: more than 5 MB, less than the machine.
        assert 5 < report["memory_mb"] < psutil.virtual_memory().total / 10**6
        assert (await health(client))["memory_mb"] >= report["memory_mb"]  # the peak holds


async def test_a_backend_that_does_not_run_has_no_memory_measured(tmp_path: Path) -> None:
    async with router(tmp_path, broken) as (client, _, _):
        report = await until(client, "failed backend", state="failed")
        assert report["memory_mb"] is None
        assert report["memory_estimate_mb"] is not None  # what it would need, all the same


async def test_a_measurement_of_a_process_since_replaced_is_not_its_successors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow measurement of PID 100 outlives a health call's timeout; the backend restarts
    # as PID 200 and the next call joins that measurement: 100's memory is not 200's.
    release = threading.Event()

    def slow_tree_memory(pid: int) -> int:
        if pid == 100:
            release.wait(5)
            return 8000 * MB
        return 1 * MB

    monkeypatch.setattr(load_figures, "tree_memory_bytes", slow_tree_memory)
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"\0" * WEIGHTS_BYTES)
    model = make_config({"chat": entry("m-chat", free_port(), model_path=str(weights))})
    backends = {"chat": Backend("chat", model.file.models["chat"], AdmissionGate(1, 1))}
    figures = load_figures.LoadFigures(tmp_path)

    def process(pid: int) -> Any:
        return {"chat": SimpleNamespace(pid=pid)}

    first = await figures.figures(backends, process(100), timeout_s=0.2)
    assert first["chat"]["memory_mb"] is None  # not known in time
    joined = asyncio.ensure_future(figures.figures(backends, process(200), timeout_s=2))
    await asyncio.sleep(0.1)
    release.set()
    assert (await joined)["chat"]["memory_mb"] is None  # 100's figure, not 200's
    fresh = await figures.figures(backends, process(200), timeout_s=2)
    assert fresh["chat"]["memory_mb"] == 1


async def test_refresh_never_waits_and_measures_at_most_once_per_max_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[int] = []
    release = threading.Event()

    def slow_tree_memory(pid: int) -> int:
        release.wait(5)
        measured.append(pid)
        return 2 * MB

    monkeypatch.setattr(load_figures, "tree_memory_bytes", slow_tree_memory)
    model = make_config({"chat": entry("m-chat", free_port(), model_path="m.gguf")})
    backends = {"chat": Backend("chat", model.file.models["chat"], AdmissionGate(1, 1))}
    processes: Any = {"chat": SimpleNamespace(pid=100)}
    figures = load_figures.LoadFigures(tmp_path)

    started = time.monotonic()
    assert figures.refresh(backends, processes)  # the measurement blocks: refresh does not
    assert not figures.refresh(backends, processes)  # one under way already: no second one
    assert time.monotonic() - started < 1
    assert figures.peak("chat", 100) is None  # nothing measured yet: the last figure stands
    release.set()
    await eventually(lambda: figures.peak("chat", 100) == 2 * MB, 5, "the measurement")
    assert measured == [100]

    assert not figures.refresh(backends, processes)  # the figure is fresh: nothing to do
    assert figures.refresh(backends, processes, max_age_s=0)  # too old now: measured again
    await eventually(lambda: len(measured) == 2, 5, "the second measurement")
