"""Stopping ``serve``: a bounded grace for requests in flight, then the backends, on every path.

Real processes throughout: ``slm-server serve`` with a fake ``llama-server`` on its PATH,
real signals, and a client streaming through it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
LONG_STREAM = "--chunks 100000 --chunk-delay 0.05"  # over an hour: ended only by the router
MARGIN_S = 2.0  # uvicorn notices a signal within 0.1 s; the rest is a slow CI machine


def serve(tmp_path: Path, grace_s: float, backend_args: str) -> RouterProcess:
    """``serve`` on one fake llama-server, started and ready."""
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # never read: the fake ignores --model
    config = {
        "models": {"chat": entry("m-chat", free_port(), model_path=str(tmp_path / "m.gguf"))},
        "router": {"shutdown_grace_s": grace_s},
    }
    bin_dir = fake_llama_server.install(tmp_path / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(tmp_path / "cache"),  # its check result stays out of ours
        fake_llama_server.ARGS_ENV: backend_args,
    }
    router = RouterProcess(config, tmp_path, command="serve", env=env).start()
    router.wait_backends_ready(30)
    return router


@pytest.fixture
def stopped_at_the_end() -> Iterator[list[RouterProcess]]:
    routers: list[RouterProcess] = []
    yield routers
    for router in routers:
        router.stop()


def backend_processes(router: RouterProcess) -> list[psutil.Process]:
    children = psutil.Process(router.pid).children(recursive=True)
    assert children, "serve started no backend"
    return children


def stopped_by_the_router(tmp_path: Path) -> bool:
    """Told to stop, not killed by the kernel when the router died (PR_SET_PDEATHSIG)."""
    return "=== slm_server: stopping it: SIGTERM" in (tmp_path / "logs" / "m-chat.log").read_text()


def gone(processes: list[psutil.Process]) -> bool:
    def alive(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(map(alive, processes))


def backend_url(router: RouterProcess) -> str:
    return f"http://127.0.0.1:{router.backends()['chat']['port']}"


def in_flight(router: RouterProcess) -> bool:
    stats = httpx.get(f"{backend_url(router)}/_fake/stats", timeout=2).json()
    return int(stats["in_flight"]) > 0


class Stream:
    """A streamed chat through the router, read in a thread until it ends."""

    def __init__(self, router: RouterProcess) -> None:
        self.events: list[str] = []
        self.first = threading.Event()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self._url = f"{router.url}/v1/chat/completions"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.first.wait(10), f"no event within 10 s: {self.error!r}"

    def _read(self) -> None:
        try:
            body = {**CHAT, "stream": True}
            with httpx.stream("POST", self._url, json=body, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.first.set()
        except BaseException as exc:  # the test asserts on it
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.first.set()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream still runs after {timeout}s"

    def last_event(self) -> Any:
        return json.loads(self.events[-1])


def test_sigterm_ends_a_long_stream_with_an_error_after_the_grace_then_stops_the_backends(
    tmp_path: Path, stopped_at_the_end: list[RouterProcess]
) -> None:
    grace_s = 1.0
    router = serve(tmp_path, grace_s, LONG_STREAM)
    stopped_at_the_end.append(router)
    backends = backend_processes(router)
    stream = Stream(router)
    signalled = time.monotonic()
    os.kill(router.pid, signal.SIGTERM)
    stream.wait(grace_s + MARGIN_S + 5)
    assert stream.error is None, repr(stream.error)
    assert stream.ended_at is not None and stream.ended_at - signalled < grace_s + MARGIN_S
    assert stream.ended_at - signalled >= grace_s  # it had the whole grace to finish
    assert len(stream.events) > 2  # it went on streaming during the grace
    error = stream.last_event()["error"]
    assert error["code"] == "shutting_down" and error["type"] == "server_error"
    assert "shutting down" in error["message"]
    assert router.wait(15) == 0, router.log()
    assert "Traceback" not in router.log()
    assert gone(backends) and stopped_by_the_router(tmp_path)


def test_a_second_ctrl_c_during_the_grace_still_ends_the_stream_and_stops_the_backends(
    tmp_path: Path, stopped_at_the_end: list[RouterProcess]
) -> None:
    grace_s = 60.0  # cut short by the second Ctrl-C
    router = serve(tmp_path, grace_s, LONG_STREAM)
    stopped_at_the_end.append(router)
    backends = backend_processes(router)
    stream = Stream(router)
    os.kill(router.pid, signal.SIGINT)
    wait_until(lambda: "Shutting down" in router.log(), 5, "the shutdown to begin")
    signalled = time.monotonic()
    os.kill(router.pid, signal.SIGINT)
    stream.wait(MARGIN_S + 5)
    assert stream.error is None, repr(stream.error)
    assert stream.ended_at is not None and stream.ended_at - signalled < MARGIN_S
    assert stream.last_event()["error"]["code"] == "shutting_down"
    assert router.wait(15) == 0, router.log()
    assert "Traceback" not in router.log()
    assert gone(backends) and stopped_by_the_router(tmp_path)


def test_a_short_request_in_flight_finishes_normally_within_the_grace(
    tmp_path: Path, stopped_at_the_end: list[RouterProcess]
) -> None:
    grace_s = 10.0
    router = serve(tmp_path, grace_s, "--response-delay 1.5")
    stopped_at_the_end.append(router)
    backends = backend_processes(router)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{router.url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_until(lambda: in_flight(router), 10, "the request to reach the backend")
        signalled = time.monotonic()
        os.kill(router.pid, signal.SIGTERM)
        response = answer.result(timeout=grace_s)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert router.wait(15) == 0, router.log()
    assert "Traceback" not in router.log()
    assert time.monotonic() - signalled < grace_s  # no wait for a grace nobody needed
    assert gone(backends) and stopped_by_the_router(tmp_path)


def test_a_request_still_unanswered_after_the_grace_gets_a_503(
    tmp_path: Path, stopped_at_the_end: list[RouterProcess]
) -> None:
    grace_s = 1.0
    router = serve(tmp_path, grace_s, "")
    stopped_at_the_end.append(router)
    backends = backend_processes(router)
    httpx.post(f"{backend_url(router)}/_fake/control", json={"response_delay": 60}, timeout=2)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{router.url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_until(lambda: in_flight(router), 10, "the request to reach the backend")
        signalled = time.monotonic()
        os.kill(router.pid, signal.SIGTERM)
        response = answer.result(timeout=grace_s + MARGIN_S + 5)
    assert grace_s <= time.monotonic() - signalled < grace_s + MARGIN_S
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "shutting_down"
    assert router.wait(15) == 0, router.log()
    assert "Traceback" not in router.log()
    assert gone(backends) and stopped_by_the_router(tmp_path)


def test_a_grace_changed_by_a_reload_is_the_one_the_shutdown_gives(
    tmp_path: Path, stopped_at_the_end: list[RouterProcess]
) -> None:
    router = serve(tmp_path, 60.0, LONG_STREAM)
    stopped_at_the_end.append(router)
    config_path = tmp_path / "models.yaml"
    config = yaml.safe_load(config_path.read_text())
    grace_s = 1.0
    config["router"]["shutdown_grace_s"] = grace_s
    config_path.write_text(yaml.safe_dump(config))
    answer = httpx.post(f"{router.url}/admin/reload", timeout=30)
    assert answer.json()["router"]["changed"] == ["shutdown_grace_s"], answer.text
    stream = Stream(router)
    signalled = time.monotonic()
    os.kill(router.pid, signal.SIGTERM)
    stream.wait(grace_s + MARGIN_S + 5)
    assert stream.ended_at is not None and stream.ended_at - signalled < grace_s + MARGIN_S
    assert stream.last_event()["error"]["code"] == "shutting_down"
    assert router.wait(15) == 0, router.log()
