"""Following a real llama-server's log while it loads (Gemma 3 270M), and restarting it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemma_entry import gemma
from router_proc import RouterProcess


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    config = {"models": {"g": gemma("gemma", on_demand=True)}}
    process = RouterProcess(config, tmp_path, command="serve").start()
    try:
        yield process
    finally:
        process.stop()


def test_a_follower_sees_llama_server_load_its_model_then_restart(router: RouterProcess) -> None:
    lines: list[str] = []
    with (
        httpx.Client(base_url=router.url, timeout=120) as client,
        client.stream("GET", "/admin/logs/g?follow=1&tail=0") as response,
    ):
        assert response.status_code == 200
        following = response.iter_lines()
        loaded: list[httpx.Response] = []
        loading = threading.Thread(
            target=lambda: loaded.append(client.post("/v1/backends/g/load")), daemon=True
        )
        loading.start()
        # Read as it loads: the supervisor's note, then llama-server's own lines.
        for line in following:
            lines.append(line)
            if "=== slm_server: starting " in line:
                break
        for line in following:
            lines.append(line)
            if "model loaded" in line or "server is listening" in line:
                break
        loading.join(120)
        assert loaded and loaded[0].status_code == 200, loaded
        first_pid = loaded[0].json()["pid"]
        assert "llama-server" in lines[0] and "--port" in lines[0]
        assert any("llama" in line for line in lines[1:]), lines
        restarted = client.post("/v1/backends/g/restart")
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["pid"] != first_pid
        # The stop and the new start, in the same followed log.
        after: list[str] = []
        for line in following:
            after.append(line)
            if "=== slm_server: starting " in line:
                break
        assert any("=== slm_server: stopping it: SIGTERM" in line for line in after), after
        answered = client.post(
            "/v1/chat/completions",
            json={
                "model": "gemma",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            },
        )
        assert answered.status_code == 200, answered.text
