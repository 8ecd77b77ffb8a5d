"""GET /metrics of a real router process, read with prometheus_client's own parser after a
known mix of requests; the backends' figures from ``serve`` over fake llama-servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import fake_llama_server
import on_demand_serving as on_demand
from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from net import eventually, free_port, wait_until
from router_proc import RouterProcess
from slm_server.router.app import RouterApp

CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "how many tokens is this"}]
CHAT = {"model": "m-chat", "messages": MESSAGES}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parsed(response.text)


def parsed(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in found, f"no {name}{labels}; have: {sorted(k for k in found if k[0] == name)}"
    return found[key]


def with_name(found: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in found if sample_name == name]


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture
def router(fake: FakeBackend, tmp_path: Path) -> Iterator[RouterProcess]:
    config = {
        "models": {
            "chat": entry("m-chat", fake.port, max_concurrency=1, default_timeout=30),
            "embed": entry("m-embed", fake.port, model_type="embeddings"),
        },
        "router": {"max_queue": 1},
    }
    process = RouterProcess(config, tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


class Seen:
    """What the client was told: the usage in its answers and the router's overhead headers."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {"m-chat": [0, 0], "m-embed": [0, 0]}
        self.overhead_ms: list[float] = []

    def answer(self, model: str, response: httpx.Response) -> None:
        assert response.status_code == 200, response.text
        self.usage(model, response.json()["usage"])
        self.overhead_ms.append(float(response.headers["x-slm-overhead-ms"]))

    def usage(self, model: str, usage: dict[str, int]) -> None:
        self.tokens[model][0] += usage["prompt_tokens"]
        self.tokens[model][1] += usage.get("completion_tokens", 0)


async def test_counts_match_a_known_mix_of_requests(
    router: RouterProcess, fake: FakeBackend
) -> None:
    seen = Seen()
    async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
        for _ in range(3):
            seen.answer("m-chat", await client.post(CHAT_PATH, json=CHAT))
        embed = {"model": "m-embed", "input": "three words here"}
        seen.answer("m-embed", await client.post("/v1/embeddings", json=embed))

        # A stream holds m-chat's only slot; one request waits for it; the next finds the
        # queue (max_queue 1) full.
        fake.control(chunks=3, chunk_delay=0.2)
        stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", CHAT_PATH, json=stream) as streamed:
            lines = streamed.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the answer has begun
            queued = asyncio.create_task(client.post(CHAT_PATH, json=CHAT))
            waiting: Samples = {}

            def one_waits() -> bool:
                waiting.update(scrape(router.url))
                return value(waiting, "slm_queued_requests", model="m-chat") == 1

            await eventually(one_waits, 10, "a request to wait for m-chat")
            assert value(waiting, "slm_in_flight_requests", model="m-chat") == 1
            assert value(waiting, "slm_in_flight_requests", model="m-embed") == 0
            refused = await client.post(CHAT_PATH, json=CHAT)
            assert refused.status_code == 429, refused.text
            events = [line async for line in lines if line.startswith("data: {")]
        seen.usage("m-chat", json.loads(events[-1].removeprefix("data: "))["usage"])
        seen.overhead_ms.append(float(streamed.headers["x-slm-overhead-ms"]))
        seen.answer("m-chat", await queued)

        unknown = await client.post(CHAT_PATH, json={**CHAT, "model": "no-such-model"})
        assert unknown.status_code == 404

    found = scrape(router.url)
    chat = {"model": "m-chat", "endpoint": CHAT_PATH, "key": "-"}
    assert value(found, "slm_requests_total", **chat, status_class="2xx") == 5
    assert value(found, "slm_requests_total", **chat, status_class="4xx") == 1
    assert value(found, "slm_requests_total", **chat, status_class="5xx") == 0
    embeddings = {"model": "m-embed", "endpoint": "/v1/embeddings", "key": "-"}
    assert value(found, "slm_requests_total", **embeddings, status_class="2xx") == 1
    # The unknown model is counted under "-", never under its own (unbounded) name.
    unrouted = {"model": "-", "endpoint": CHAT_PATH, "key": "-"}
    assert value(found, "slm_requests_total", **unrouted, status_class="4xx") == 1
    assert {labels["model"] for labels in with_name(found, "slm_requests_total")} == {
        "m-chat",
        "m-embed",
        "-",
    }
    assert with_name(found, "slm_rejected_requests_total") == [
        {"model": "m-chat", "reason": "queue_full"}
    ]
    assert value(found, "slm_rejected_requests_total", model="m-chat", reason="queue_full") == 1

    per_endpoint = {"model": "m-chat", "endpoint": CHAT_PATH}
    assert value(found, "slm_request_duration_seconds_count", **per_endpoint) == 6
    assert value(found, "slm_time_to_first_byte_seconds_count", **per_endpoint) == 1
    # The stream's first byte came before its end, which took at least its 3 gaps of 0.2 s.
    assert value(found, "slm_time_to_first_byte_seconds_sum", **per_endpoint) < 0.4
    assert value(found, "slm_request_duration_seconds_bucket", **per_endpoint, le="0.5") < 6

    for model, (prompt, completion) in seen.tokens.items():
        assert prompt > 0
        assert value(found, "slm_tokens_total", model=model, kind="prompt") == prompt
        assert value(found, "slm_tokens_total", model=model, kind="completion") == completion

    # The same figure as the header, once per answer that carried it (the 429 and 404: none).
    assert value(found, "slm_router_overhead_seconds_count") == len(seen.overhead_ms) == 6
    header_sum_s = sum(seen.overhead_ms) / 1000
    assert value(found, "slm_router_overhead_seconds_sum") == pytest.approx(header_sum_s, abs=1e-5)

    assert value(found, "slm_queued_requests", model="m-chat") == 0
    assert value(found, "slm_in_flight_requests", model="m-chat") == 0
    assert with_name(found, "slm_backend_up") == []  # `router` runs no backends


async def test_a_stream_the_client_left_is_cut_and_one_the_backend_broke_off_is_5xx(
    router: RouterProcess, fake: FakeBackend
) -> None:
    stream = {**CHAT, "stream": True}
    chat = {"model": "m-chat", "endpoint": CHAT_PATH, "key": "-"}
    async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
        fake.control(chunks=50, chunk_delay=0.1)
        async with client.stream("POST", CHAT_PATH, json=stream) as left:
            assert left.status_code == 200
            assert (await anext(left.aiter_lines())).startswith("data: ")
        # The router sees the client gone at its next write, a chunk later.
        cut = ("slm_requests_total", frozenset({**chat, "status_class": "cut"}.items()))
        await eventually(
            lambda: scrape(router.url).get(cut) == 1, 10, "the stream the client left to count"
        )

        fake.control(chunks=5, chunk_delay=0, die_mid_stream=2)  # the fake exits mid-stream
        broken = await client.post(CHAT_PATH, json=stream)
        assert broken.status_code == 200  # the status line was out before the backend died
        assert '"error"' in broken.text.splitlines()[-2]  # the stream ends with an error event

    found = scrape(router.url)
    assert value(found, "slm_requests_total", **chat, status_class="5xx") == 1
    assert value(found, "slm_requests_total", **chat, status_class="cut") == 1
    assert value(found, "slm_requests_total", **chat, status_class="2xx") == 0


def test_metrics_takes_get_only(router: RouterProcess) -> None:
    response = httpx.post(f"{router.url}/metrics", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[RouterProcess]:
    """``serve`` with a fake llama-server on its PATH: m-chat starts at once, m-embed on
    demand."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")  # never read: the fake ignores --model
    bin_dir = fake_llama_server.install(tmp_path / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(tmp_path / "cache"),  # its check result stays out of ours
    }
    models: dict[str, Any] = {
        "chat": entry("m-chat", free_port(), model_path=str(model)),
        "embed": entry(
            "m-embed", free_port(), model_path=str(model), model_type="embeddings", on_demand=True
        ),
    }
    process = RouterProcess({"models": models}, tmp_path, command="serve", env=env).start()
    try:
        yield process
    finally:
        process.stop()


def backend_states(found: Samples, role: str) -> dict[str, float]:
    return {
        labels["state"]: found[("slm_backend_state", frozenset(labels.items()))]
        for labels in with_name(found, "slm_backend_state")
        if labels["role"] == role
    }


def test_backend_state_up_restarts_memory_and_load_time(serving: RouterProcess) -> None:
    found: Samples = {}

    def chat_up(restarts: int) -> bool:
        found.clear()
        found.update(scrape(serving.url))
        up = value(found, "slm_backend_up", role="chat", model="m-chat") == 1
        # A scrape serves the last measurement and asks for the next: the memory of a
        # backend just started shows from a later scrape on.
        measured = ("slm_backend_memory_peak_bytes", frozenset({("role", "chat")})) in found
        return (
            up and measured and value(found, "slm_backend_restarts_total", role="chat") == restarts
        )

    wait_until(lambda: chat_up(0), 30, f"m-chat to be ready (log: {serving.log_path})")
    assert backend_states(found, "chat") == {
        "unloaded": 0,
        "starting": 0,
        "ready": 1,
        "stopping": 0,
        "failed": 0,
    }
    assert backend_states(found, "embed") == {
        "unloaded": 1,
        "starting": 0,
        "ready": 0,
        "stopping": 0,
        "failed": 0,
    }
    assert value(found, "slm_backend_up", role="embed", model="m-embed") == 0
    assert value(found, "slm_backend_memory_peak_bytes", role="chat") > 10**6  # a Python process
    assert value(found, "slm_backend_memory_peak_bytes", role="embed") == 0  # not running
    first_load_s = value(found, "slm_backend_load_seconds", role="chat")
    assert 0 < first_load_s < 30
    assert {labels["role"] for labels in with_name(found, "slm_backend_load_seconds")} == {"chat"}

    pid = serving.backends()["chat"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: chat_up(1), 30, f"m-chat to be restarted (log: {serving.log_path})")
    assert value(found, "slm_backend_load_seconds", role="chat") != first_load_s  # the new start


async def in_process_scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return parsed(response.text)


async def test_a_converted_answer_counts_its_tokens_once_and_a_timeout_is_a_refusal(
    fake: FakeBackend,
) -> None:
    config = make_config({"chat": entry("m-chat", fake.port, default_timeout=1)})
    app = RouterApp(config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        # The fake has no /v1/messages: its 404 is not relayed, the converted answer is.
        messages = {"model": "m-chat", "max_tokens": 16, "messages": MESSAGES}
        answer = await client.post("/v1/messages", json=messages)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-slm-converted-from"].startswith("chat-completions")
        usage = answer.json()["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0

        fake.control(hang=True)
        timed_out = await client.post(CHAT_PATH, json=CHAT)
        assert timed_out.status_code == 504
        found = await in_process_scrape(client)
    await app.aclose()

    converted = {"model": "m-chat", "endpoint": "/v1/messages", "key": "-"}
    assert value(found, "slm_requests_total", **converted, status_class="2xx") == 1
    assert value(found, "slm_tokens_total", model="m-chat", kind="prompt") == usage["input_tokens"]
    completion = usage["output_tokens"]
    assert value(found, "slm_tokens_total", model="m-chat", kind="completion") == completion
    chat = {"model": "m-chat", "endpoint": CHAT_PATH, "key": "-"}
    assert value(found, "slm_requests_total", **chat, status_class="5xx") == 1
    assert value(found, "slm_rejected_requests_total", model="m-chat", reason="timeout") == 1


async def test_a_request_waiting_for_memory_is_queued_and_one_that_never_fits_is_refused(
    tmp_path: Path,
) -> None:
    models = {
        "a": on_demand.model("a", on_demand=False),
        "b": on_demand.model("b"),
        "huge": on_demand.model("huge", memory_gb=4),
    }
    launcher = on_demand.Launcher({"a": ["--chunks", "15", "--chunk-delay", "0.1"]})
    async with on_demand.serving(
        tmp_path, models, launcher, max_loaded_models=1, memory_budget_gb=1.5
    ) as served:
        await served.ready("a")
        scheduler = served.app.scheduler
        assert scheduler is not None
        a_stream = asyncio.create_task(
            served.client.post(CHAT_PATH, json={**on_demand.chat("m-a"), "stream": True})
        )
        await eventually(lambda: served.app.table.backends["a"].in_flight == 1, 5, "a busy")
        b = asyncio.create_task(served.client.post(CHAT_PATH, json=on_demand.chat("m-b")))
        await eventually(lambda: scheduler.waiting("b") == 1, 5, "b to wait for a's memory")
        waiting = await in_process_scrape(served.client)
        assert value(waiting, "slm_queued_requests", model="m-b") == 1
        assert value(waiting, "slm_in_flight_requests", model="m-b") == 0
        assert value(waiting, "slm_in_flight_requests", model="m-a") == 1

        never = await served.client.post(CHAT_PATH, json=on_demand.chat("m-huge"))
        assert never.status_code == 503 and never.json()["error"]["code"] == "insufficient_memory"
        assert [r.status_code for r in await asyncio.gather(a_stream, b)] == [200, 200]
        found = await in_process_scrape(served.client)
    assert value(found, "slm_rejected_requests_total", model="m-huge", reason="memory") == 1
    assert value(found, "slm_queued_requests", model="m-b") == 0
    huge = {"model": "m-huge", "endpoint": CHAT_PATH, "key": "-"}
    assert value(found, "slm_requests_total", **huge, status_class="5xx") == 1
