"""``backend: command`` through a real ``slm-server serve``, with the fake backend as the
command: what the entry says reaches the program, and its failures are said in words."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fake_backend_proc import SCRIPT
from net import free_port, wait_until
from router_proc import RouterProcess

Serve = Callable[..., RouterProcess]


def command_entry(model_id: str, command: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "backend": "command",
        "port": free_port(),
        "host": "127.0.0.1",
        "default_timeout": 30,
        "command": command,
        **fields,
    }


def fake(*args: str) -> list[str]:
    """The fake backend's command line, on the entry's own port and host."""
    return [sys.executable, str(SCRIPT), "--port", "{port}", "--host", "{host}", *args]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    routers: list[RouterProcess] = []

    def start(models: dict[str, dict[str, Any]]) -> RouterProcess:
        process = RouterProcess({"models": models}, tmp_path, command="serve")
        routers.append(process)
        return process.start()

    yield start
    for router in routers:
        router.stop()


def chat(router: RouterProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)


def test_placeholders_env_and_health_path_reach_the_program(serve: Serve) -> None:
    # The fake has no /health here: only the entry's health_path can find it ready. The
    # shell reads the model name from the environment the entry gives.
    line = f'exec {shlex.join(fake("--no-health"))} --model-name "$SERVED_AS"'
    entry = command_entry(
        "cmd-model", ["sh", "-c", line], env={"SERVED_AS": "from-env"}, health_path="/v1/models"
    )
    router = serve({"cmd": entry})
    report = router.wait_backends_ready(30)["cmd"]
    assert report["backend"] == "command"
    reply = chat(router, "cmd-model")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "echo: hi"
    # Straight to the program, on the port {port} stood for.
    served = httpx.get(f"http://127.0.0.1:{entry['port']}/v1/models", timeout=5).json()
    assert [model["id"] for model in served["data"]] == ["from-env"]


def test_a_program_not_found_is_said_in_health_and_logs(serve: Serve, tmp_path: Path) -> None:
    entry = command_entry("gone-model", ["no-such-engine-here", "serve", "--port", "{port}"])
    router = serve({"gone": entry})
    wait_until(lambda: router.backends()["gone"]["state"] == "failed", 30, "the start to fail")
    report = router.backends()["gone"]
    assert report["reason"] == "cannot start: command not found: no-such-engine-here"
    reply = chat(router, "gone-model")
    assert reply.status_code == 503
    assert "command not found: no-such-engine-here" in reply.json()["error"]["message"]
    log = router.log()
    assert "command not found: no-such-engine-here" in log and "Traceback" not in log
    backend_log = (tmp_path / "logs" / "gone-model.log").read_text()
    assert "cannot start: command not found: no-such-engine-here" in backend_log


def test_the_stop_signal_stops_it_when_serve_stops(serve: Serve, tmp_path: Path) -> None:
    record = tmp_path / "signals"
    command = fake("--ignore-sigterm", "--record-signals", str(record))
    router = serve({"cmd": command_entry("cmd-model", command, stop_signal="SIGINT")})
    pid = router.wait_backends_ready(30)["cmd"]["pid"]
    began = time.monotonic()
    router.stop()  # SIGTERM to serve, as a service manager would send
    assert time.monotonic() - began < 8  # not the 10 s SIGKILL deadline
    assert record.read_text().split() == ["SIGINT"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_on_demand_and_idle_ttl_apply_as_to_any_entry(serve: Serve) -> None:
    entry = command_entry("lazy-model", fake(), on_demand=True, idle_ttl_s=1, memory_gb=1)
    router = serve({"lazy": entry})
    assert router.backends()["lazy"]["state"] == "unloaded"  # not started at launch
    reply = chat(router, "lazy-model")  # the first request starts it
    assert reply.status_code == 200, reply.text
    report = router.backends()["lazy"]
    assert report["state"] == "ready" and report["memory_estimate_mb"] == 1000
    wait_until(lambda: router.backends()["lazy"]["state"] == "unloaded", 15, "idle stop")
