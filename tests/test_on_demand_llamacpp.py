"""On-demand loading under a memory budget, with real llama-server processes.

Two entries serve the same Gemma 3 270M GGUF under different ids; each claims 0.6 GB
(``memory_gb``) against a budget of 1.0 GB, so only one of them can run at a time and a
request for the other must stop it first. A third entry gives no ``memory_gb``: its need
is the router's estimate from the GGUF, checked against the memory it really takes.
All three start on demand; each test begins with none running.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psutil
import pytest

from gemma_entry import gemma
from net import wait_until
from router_proc import RouterProcess

ROLES = ("a", "b", "c")
IDS = {"a": "gemma-a", "b": "gemma-b", "c": "gemma-c"}
_REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = {
        "models": {
            "a": gemma(IDS["a"], on_demand=True, memory_gb=0.6),
            "b": gemma(IDS["b"], on_demand=True, memory_gb=0.6),
            "c": gemma(IDS["c"], on_demand=True),  # its need: estimated from the GGUF
        },
        "router": {"memory_budget_gb": 1.0},
    }
    process = RouterProcess(config, tmp_path_factory.mktemp("on-demand"), command="serve")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def router(served: RouterProcess) -> RouterProcess:
    """The router with no backend running, whatever the test before left."""
    for role in ROLES:
        if served.backends()[role]["state"] != "unloaded":
            control(served, role, "unload")
    return served


def control(router: RouterProcess, role: str, action: str) -> dict[str, Any]:
    """``POST /v1/backends/{role}/{action}``: the role's health entry from a 200."""
    response = httpx.post(f"{router.url}/v1/backends/{role}/{action}", timeout=_REQUEST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()
    return entry


def ask(client: openai.OpenAI, role: str) -> None:
    """One short chat to ``role``'s model, answered by that model."""
    reply = client.chat.completions.create(
        model=IDS[role],
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        timeout=_REQUEST_TIMEOUT_S,
    )
    assert reply.model == IDS[role]
    assert reply.choices[0].message.content


def assert_unloaded(report: dict[str, Any], pid: int) -> None:
    assert report["state"] == "unloaded", report
    assert report["status"] == "unloaded", report
    assert report["pid"] is None and report["memory_mb"] is None, report
    assert not psutil.pid_exists(pid), f"PID {pid} still runs"


def assert_loaded(report: dict[str, Any]) -> int:
    """The running backend's PID."""
    assert report["state"] == "ready", report
    assert report["memory_mb"] > 0, report
    pid: int = report["pid"]
    assert psutil.pid_exists(pid)
    return pid


def test_alternate_requests_swap_the_models(router: RouterProcess) -> None:
    earlier = len(router.log())
    with router.openai() as client:
        ask(client, "a")
        first_a = assert_loaded(router.backends()["a"])
        assert router.backends()["b"]["state"] == "unloaded"

        ask(client, "b")  # a is idle: stopped to make room, before b starts
        health = router.backends()
        assert_unloaded(health["a"], first_a)
        pid_b = assert_loaded(health["b"])

        ask(client, "a")
        health = router.backends()
        assert_unloaded(health["b"], pid_b)
        assert assert_loaded(health["a"]) != first_a
    log = router.log()[earlier:]
    assert re.search(r"evicted a \(idle .*\) to make room for b \(", log), log
    assert re.search(r"evicted b \(idle .*\) to make room for a \(", log), log


class _Stream(threading.Thread):
    """A long streamed chat to ``a``, noting when each piece arrived."""

    def __init__(self, router: RouterProcess, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.router, self.max_tokens = router, max_tokens
        self.first = threading.Event()
        self.arrivals: list[float] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.router.openai() as client:
                stream = client.chat.completions.create(
                    model=IDS["a"],
                    messages=[{"role": "user", "content": "Tell a long story."}],
                    max_tokens=self.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},  # exactly max_tokens: a known length
                    timeout=_REQUEST_TIMEOUT_S,
                )
                for chunk in stream:
                    self.arrivals.append(time.monotonic())
                    self.first.set()
                    if chunk.usage is not None:
                        self.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        self.text += choice.delta.content or ""
                        self.finish_reason = choice.finish_reason or self.finish_reason
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.first.set()


def test_a_long_stream_finishes_before_the_other_model_takes_its_memory(
    router: RouterProcess,
) -> None:
    pid_a = assert_loaded(control(router, "a", "load"))
    stream = _Stream(router, max_tokens=160)
    stream.start()
    assert stream.first.wait(_REQUEST_TIMEOUT_S) and stream.error is None, stream.error
    answered_b: list[float] = []
    failed_b: list[BaseException] = []

    def ask_b() -> None:
        try:
            with router.openai() as client:
                ask(client, "b")
            answered_b.append(time.monotonic())
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed_b.append(exc)

    earlier = len(router.log())
    asker = threading.Thread(target=ask_b, daemon=True)
    asker.start()
    wait_until(
        lambda: "b waits for memory: a must finish or stop first" in router.log()[earlier:],
        10,
        "the request for b to wait for a's memory",
    )
    assert stream.is_alive(), "a's stream ended before b's request waited: make it longer"
    health = router.backends()
    assert health["a"]["pid"] == pid_a and health["a"]["in_flight"] == 1, health["a"]
    assert health["b"]["state"] == "unloaded", health["b"]

    stream.join(_REQUEST_TIMEOUT_S)
    asker.join(_REQUEST_TIMEOUT_S)
    assert stream.error is None, stream.error
    assert stream.finish_reason == "length" and stream.completion_tokens == 160
    assert stream.text.strip()
    assert answered_b, failed_b
    assert answered_b[0] > stream.arrivals[-1]
    assert not psutil.pid_exists(pid_a)


def test_the_estimate_is_near_the_measured_memory(router: RouterProcess) -> None:
    loaded = control(router, "c", "load")
    pid = assert_loaded(loaded)
    with router.openai() as client:
        ask(client, "c")  # an answer reads every weight, so all mapped pages count
    report = router.backends()["c"]
    measured, estimate = report["memory_mb"], report["memory_estimate_mb"]
    print(f"gemma 270M, 1024 tokens: measured {measured} MB, estimated {estimate} MB")
    assert abs(estimate - measured) <= 0.5 * measured, (measured, estimate)
    unloaded = control(router, "c", "unload")
    assert_unloaded(unloaded, pid)
    assert unloaded["memory_estimate_mb"] == estimate


def test_load_and_unload_by_hand(router: RouterProcess) -> None:
    loaded = control(router, "a", "load")
    assert loaded["model_id"] == IDS["a"] and loaded["status"] == "healthy", loaded
    pid = assert_loaded(loaded)
    assert loaded["memory_estimate_mb"] == 600  # memory_gb, in decimal MB
    with router.openai() as client:
        ask(client, "a")  # served by the backend loaded by hand
    assert router.backends()["a"]["pid"] == pid
    assert_unloaded(control(router, "a", "unload"), pid)
    unknown = httpx.post(f"{router.url}/v1/backends/nobody/load", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "role_not_found"
