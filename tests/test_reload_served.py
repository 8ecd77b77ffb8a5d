"""What starts a reload of a real ``slm-server serve``: SIGHUP, a change of the file with
``--watch-config``, and ``slm-server reload``. A fake llama-server is first on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess
from slm_server.admin.reload_triggers import DEBOUNCE_S, POLL_S

Serve = Callable[..., RouterProcess]


def model(tmp_path: Path, role: str, **fields: Any) -> dict[str, Any]:
    gguf = tmp_path / f"{role}.gguf"
    gguf.write_bytes(b"GGUF")  # never read: memory_gb replaces the estimate, the fake ignores it
    fields = {"memory_gb": 1, "default_timeout": 30, **fields}
    return entry(f"m-{role}", free_port(), model_path=str(gguf), **fields)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    routers: list[RouterProcess] = []

    def start(models: dict[str, dict[str, Any]], args: list[str] | None = None) -> RouterProcess:
        bin_dir = fake_llama_server.install(tmp_path / "bin")
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLM_SERVER_CACHE": str(tmp_path / "cache"),  # its check result stays out of ours
        }
        process = RouterProcess(
            {"models": models}, tmp_path, command="serve", env=env, args=args or []
        )
        routers.append(process)
        return process.start()

    yield start
    for router in routers:
        router.stop()


def rewrite(router: RouterProcess, models: dict[str, dict[str, Any]]) -> None:
    (router.tmp_dir / "models.yaml").write_text(yaml.safe_dump({"models": models}))


def model_ids(router: RouterProcess) -> set[str]:
    models = httpx.get(f"{router.url}/v1/models", timeout=5).json()["data"]
    return {m["id"] for m in models}


def log_lines(router: RouterProcess, part: str) -> list[str]:
    return [line for line in router.log().splitlines() if part in line]


def test_sighup_reloads_the_config(tmp_path: Path, serve: Serve) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b")
    router = serve({"a": a, "b": b})
    pid_a = router.wait_backends_ready(15)["a"]["pid"]
    rewrite(router, {"a": a, "c": model(tmp_path, "c", on_demand=True)})
    os.kill(router.pid, signal.SIGHUP)
    wait_until(lambda: model_ids(router) == {"m-a", "m-c"}, 15, "the reloaded models")
    wait_until(lambda: "b" not in router.backends(), 15, "b gone")
    assert router.backends()["a"]["pid"] == pid_a
    assert router.backends()["c"]["state"] == "unloaded"  # on demand: its request starts it
    reply = router.openai().chat.completions.create(
        model="m-c", messages=[{"role": "user", "content": "hi"}], timeout=30
    )
    assert reply.choices[0].message.content == "echo: hi"
    wait_until(lambda: bool(log_lines(router, "config reloaded")), 15, "the reload's last line")
    assert log_lines(router, "reload: b: removed")
    assert log_lines(router, "reload: c: added")


def test_watch_config_reloads_once_per_save_even_in_two_steps(tmp_path: Path, serve: Serve) -> None:
    a = model(tmp_path, "a")
    router = serve({"a": a}, ["--watch-config"])
    router.wait_backends_ready(15)
    path = router.tmp_dir / "models.yaml"
    text = yaml.safe_dump({"models": {"a": a, "b": model(tmp_path, "b", on_demand=True)}})
    # An editor's save in two steps: the file cut short (not valid YAML), then whole.
    with path.open("w") as file:
        file.write(text[: len(text) // 2])
        file.flush()
        os.fsync(file.fileno())
    # The editor's second step comes after the watcher has seen the first (it looks every
    # POLL_S) but before the file has stayed the same for DEBOUNCE_S: only the debounce
    # keeps the half-written file from being reloaded.
    time.sleep(1.5 * POLL_S)
    assert 1.5 * POLL_S < DEBOUNCE_S
    with path.open("w") as file:
        file.write(text)
    wait_until(lambda: model_ids(router) == {"m-a", "m-b"}, 15, "the reloaded models")
    wait_until(lambda: bool(log_lines(router, "config reloaded")), 15, "the reload's last line")
    assert len(log_lines(router, "reloading the config from")) == 1
    assert not log_lines(router, "not reloaded")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLM_SERVER_CONFIG", "SLM_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "slm_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_reload_command_says_what_changed_or_what_is_wrong(
    tmp_path: Path, serve: Serve
) -> None:
    a, b = model(tmp_path, "a"), model(tmp_path, "b")
    router = serve({"a": a, "b": b})
    router.wait_backends_ready(15)
    rewrite(router, {"a": {**a, "idle_ttl_s": 300}})
    done = run_cli("reload", "--url", router.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a: updated", "b: removed"]

    rewrite(router, {"a": {**a, "port": "eighty"}, "b": {**b, "contex_length": 1}})
    refused = run_cli("reload", "--url", router.url)
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert len(lines) == 3 and lines[-1] == "2 error(s): the running config stays"
    assert "models.a" in lines[0] and "port" in lines[0]
    assert "contex_length" in lines[1]
    assert model_ids(router) == {"m-a"}
