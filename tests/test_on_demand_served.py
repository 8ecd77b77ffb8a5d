"""On-demand loading through a real ``slm-server serve``, with a fake llama-server on PATH.

Real processes throughout: the router, its backends, and clients (the openai SDK, httpx)
that connect, wait and leave as users' do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess

HELD_S = 2.0  # how long the busy model's request takes


def model(tmp_path: Path, role: str, **fields: Any) -> dict[str, Any]:
    gguf = tmp_path / f"{role}.gguf"
    gguf.write_bytes(b"GGUF")  # never read: memory_gb replaces the estimate, the fake ignores it
    fields = {"on_demand": True, "memory_gb": 1, "default_timeout": 30, **fields}
    return entry(f"m-{role}", free_port(), model_path=str(gguf), **fields)


Serve = Callable[..., RouterProcess]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    routers: list[RouterProcess] = []

    def start(models: dict[str, dict[str, Any]], **router: Any) -> RouterProcess:
        bin_dir = fake_llama_server.install(tmp_path / "bin")
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLM_SERVER_CACHE": str(tmp_path / "cache"),  # its check result stays out of ours
        }
        config = {"models": models, "router": router}
        process = RouterProcess(config, tmp_path, command="serve", env=env)
        routers.append(process)
        return process.start()

    yield start
    for router in routers:
        router.stop()


def statuses(router: RouterProcess) -> dict[str, str]:
    models = httpx.get(f"{router.url}/v1/models", timeout=5).json()["data"]
    return {m["id"]: m["status"] for m in models}


def log_lines(router: RouterProcess, part: str) -> list[str]:
    return [line for line in router.log().splitlines() if part in line]


def test_concurrent_requests_for_an_unloaded_model_start_it_once(
    tmp_path: Path, serve: Serve
) -> None:
    router = serve({"chat": model(tmp_path, "chat")})
    assert statuses(router) == {"m-chat": "unloaded"}
    assert router.backends()["chat"]["state"] == "unloaded"
    client = router.openai()

    def ask(i: int) -> str | None:
        answer = client.chat.completions.create(
            model="m-chat", messages=[{"role": "user", "content": f"q{i}"}], timeout=30
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [f"echo: q{i}" for i in range(8)]
    assert len(log_lines(router, "starting chat (est. 1.0 GB)")) == 1
    assert len(log_lines(router, "chat: starting llama-server")) == 1
    report = router.backends()["chat"]
    assert report["state"] == "ready" and report["restarts"] == 0
    assert statuses(router) == {"m-chat": "loaded"}


def test_a_client_that_leaves_while_waiting_for_memory_counts_for_nothing(
    tmp_path: Path, serve: Serve
) -> None:
    models = {"a": model(tmp_path, "a", on_demand=False), "b": model(tmp_path, "b")}
    router = serve(models, max_loaded_models=1)
    wait_until(lambda: router.backends()["a"]["state"] == "ready", 15, "a to be ready")
    port = router.backends()["a"]["port"]
    backend = f"http://127.0.0.1:{port}"
    httpx.post(f"{backend}/_fake/control", json={"response_delay": HELD_S}, timeout=5)
    url = f"{router.url}/v1/chat/completions"
    chat_a = {"model": "m-a", "messages": [{"role": "user", "content": "a"}]}
    chat_b = {"model": "m-b", "messages": [{"role": "user", "content": "b"}]}
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, url, json=chat_a, timeout=30)
        wait_until(
            lambda: httpx.get(f"{backend}/_fake/stats", timeout=5).json()["in_flight"] == 1,
            10,
            "a's request to reach its backend",
        )
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and leaves
            httpx.post(url, json=chat_b, timeout=0.5)
        wait_until(
            lambda: bool(log_lines(router, "'b' (m-b on port")),
            5,
            "the router to notice the client left",
        )
        # Later requests are quick again (the one in flight keeps its delay).
        httpx.post(f"{backend}/_fake/control", json={"response_delay": 0}, timeout=5)
        assert held.result(timeout=HELD_S + 10).status_code == 200
    # The request that left is not served later: a stays, b is never started for it.
    assert httpx.post(url, json=chat_a, timeout=10).status_code == 200
    assert router.backends()["b"]["state"] == "unloaded"
    assert log_lines(router, "starting b") == []
    assert log_lines(router, "evicted a") == []
    assert "client disconnected" in log_lines(router, "'b' (m-b on port")[0]
