"""Waiting for a slot or a loading backend: clients that leave, one deadline, queue time.

The router runs in this process under uvicorn on a real socket (so a client can really hang
up), against the fake backend as a subprocess; the tests look at the admission gate to know
when requests are queued, never at the clock.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT, FakeBackend
from net import eventually, free_port
from router_served import RawClient, served
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.router.admission import AdmissionGate
from slm_server.router.app import RouterApp
from slm_server.router.asgi import Message, Receive, Scope, Send
from slm_server.supervisor import RestartPolicy, Supervisor

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BYTES = json.dumps(CHAT).encode()
FAST = RestartPolicy(startup_timeout_s=20, max_start_failures=2, backoff_s=(0.05,), stop_grace_s=2)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(autouse=True)
def _reset(fake: FakeBackend) -> None:
    fake.control(reset=True, reset_stats=True)


def gate_of(app: RouterApp) -> AdmissionGate:
    return app.table.backends["chat"].gate


async def stats(fake: FakeBackend) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(fake.stats)
    return result


@asynccontextmanager
async def supervised(
    tmp_path: Path, *fake_args: str, max_queue: int = 64, **fields: Any
) -> AsyncIterator[tuple[RouterApp, str, str]]:
    """A router that starts the fake itself (as ``serve`` does): app, router URL, fake URL."""
    port = free_port()

    def launch(role: str, model: ModelEntry) -> LaunchSpec:
        return LaunchSpec([sys.executable, str(SCRIPT), "--port", str(port), *fake_args])

    config = make_config({"chat": entry("m-chat", port, **fields)}, max_queue=max_queue)
    app = RouterApp(config, Supervisor(config, launch, tmp_path / "logs", FAST))
    async with served(app) as url:
        yield app, url, f"http://127.0.0.1:{port}"


async def fake_request(fake_url: str, path: str, payload: Any = None) -> Any:
    async with httpx.AsyncClient(base_url=fake_url, timeout=5) as client:
        if payload is None:
            return (await client.get(path)).json()
        response = await client.post(path, json=payload)
        assert response.status_code == 200, response.text
        return response.json()


async def fake_listening(fake_url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            await fake_request(fake_url, "/_fake/control")
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the supervised fake never listened"
            await asyncio.sleep(0.02)


# -- a client that leaves while it waits ---------------------------------------------------


async def test_clients_that_leave_the_queue_never_reach_the_backend(fake: FakeBackend) -> None:
    fake.control(hang=True)
    config = make_config(
        {"chat": entry("m-chat", fake.port, max_concurrency=1, default_timeout=30)}, max_queue=3
    )
    app = RouterApp(config)
    gate = gate_of(app)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        holder = await RawClient.post(url, "/v1/chat/completions", CHAT_BYTES)
        await eventually(lambda: gate.active == 1, 5, "the first request to hold the slot")
        leaving = [await RawClient.post(url, "/v1/chat/completions", CHAT_BYTES) for _ in range(3)]
        await eventually(lambda: gate.waiting == 3, 5, "three requests queued")
        for client_gone in leaving:
            await client_gone.hang_up()
        await eventually(lambda: gate.waiting == 0, 2, "the queue to be freed at once")

        # Live clients fit in the places the leavers freed: queued, not refused with 429.
        live = [
            asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(3)
        ]
        await eventually(
            lambda: gate.waiting == 3 or any(t.done() for t in live), 5, "live requests queued"
        )
        assert not any(t.done() for t in live), [t.result().status_code for t in live if t.done()]
        fake.control(hang=False)
        await holder.hang_up()  # frees the slot: the live ones go on
        answers = await asyncio.gather(*live)
    assert [a.status_code for a in answers] == [200, 200, 200]
    counted = await stats(fake)
    assert counted["requests"] == 1 + 3, counted  # the holder and the live ones, no leaver


async def test_clients_that_leave_while_the_backend_loads_never_reach_it(tmp_path: Path) -> None:
    async with supervised(
        tmp_path, "--loading", max_queue=2, max_concurrency=1, default_timeout=30
    ) as (app, url, fake_url):
        gate = gate_of(app)
        leaving = [await RawClient.post(url, "/v1/chat/completions", CHAT_BYTES) for _ in range(3)]
        await eventually(
            lambda: gate.active + gate.waiting == 3, 5, "three requests waiting for the load"
        )
        for client_gone in leaving:
            await client_gone.hang_up()
        await eventually(lambda: gate.active + gate.waiting == 0, 2, "their places freed")

        await fake_listening(fake_url)
        await fake_request(fake_url, "/_fake/control", {"loading": False})
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=CHAT) for _ in range(3))
            )
        assert [a.status_code for a in answers] == [200, 200, 200]
        counted = await fake_request(fake_url, "/_fake/stats")
        assert counted["requests"] == 3, counted  # the live ones only


# -- one deadline per request --------------------------------------------------------------


def timed_out(response: httpx.Response, phase: str) -> None:
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "backend_timeout")
    assert f"ran out while {phase}" in error["message"], error["message"]


async def timed_post(
    client: httpx.AsyncClient, path: str, body: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.post(path, json=body)
    return response, time.monotonic() - started


async def test_the_answer_phase_runs_out_at_the_deadline(fake: FakeBackend) -> None:
    fake.control(hang=True)
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port, default_timeout=0.5)}))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response, elapsed = await timed_post(client, "/v1/chat/completions", CHAT)
    timed_out(response, "waiting for the backend's answer")
    assert 0.5 <= elapsed < 0.9
    assert "0.5s" in response.json()["error"]["message"]


async def test_the_slot_phase_runs_out_at_the_deadline(fake: FakeBackend) -> None:
    # The holder streams for 3 s: past its headers, a stream is bound by its gaps alone.
    fake.control(chunks=10, chunk_delay=0.3)
    fields = {"default_timeout": 0.6, "max_concurrency": 1}
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port, **fields)}))
    gate = gate_of(app)
    stream = {**CHAT, "stream": True}
    async with (
        served(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=stream),
    ):
        await eventually(lambda: gate.active == 1, 5, "the stream to hold the slot")
        response, elapsed = await timed_post(client, "/v1/chat/completions", CHAT)
    timed_out(response, "waiting for a free slot")
    assert 0.6 <= elapsed < 1.0


async def test_the_load_phase_runs_out_at_the_deadline(tmp_path: Path) -> None:
    async with (
        supervised(tmp_path, "--loading", default_timeout=0.5) as (_, url, _fake),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response, elapsed = await timed_post(client, "/v1/chat/completions", CHAT)
    timed_out(response, "loading the backend")
    assert 0.5 <= elapsed < 0.9


async def test_a_load_then_a_slow_answer_share_one_deadline(tmp_path: Path) -> None:
    async with (
        supervised(tmp_path, "--loading", "--hang", default_timeout=1.5) as (_, url, fake_url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        await fake_listening(fake_url)
        request = asyncio.create_task(timed_post(client, "/v1/chat/completions", CHAT))
        await asyncio.sleep(0.8)  # the scenario: the load takes about half the budget
        await fake_request(fake_url, "/_fake/control", {"loading": False})
        response, elapsed = await request
    timed_out(response, "waiting for the backend's answer")
    assert 1.5 <= elapsed < 2.1  # not 0.8 s of loading plus a fresh 1.5 s (2.3 s)


async def test_a_converted_retry_gets_no_fresh_timeout(fake: FakeBackend) -> None:
    # The native try is refused after 0.6 s; the converted chat request then hangs.
    fake.control(no_responses=True, refusal_delay=0.6, hang=True)
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port, default_timeout=1.0)}))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response, elapsed = await timed_post(
            client, "/v1/responses", {"model": "m-chat", "input": "hi"}
        )
    timed_out(response, "waiting for the backend's answer")
    assert 1.0 <= elapsed < 1.5  # not 0.6 s plus a fresh 1.0 s (1.6 s)


# -- the router's own time, and time queued -------------------------------------------------


async def test_queued_time_is_reported_apart_from_the_routers_own(fake: FakeBackend) -> None:
    fake.control(response_delay=0.5)
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port, max_concurrency=1)}))
    gate = gate_of(app)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        holder = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await eventually(lambda: gate.active == 1, 5, "the first request to hold the slot")
        queued = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await eventually(lambda: gate.waiting == 1, 5, "the second request queued")
        fake.control(response_delay=0)  # the holder keeps its 0.5 s; the queued one is quick
        first, second = await holder, await queued
    assert first.status_code == second.status_code == 200
    assert "x-slm-queue-ms" not in first.headers  # never waited
    assert float(second.headers["x-slm-queue-ms"]) >= 200
    assert 0 < float(second.headers["x-slm-overhead-ms"]) < 100


async def test_converted_answers_report_the_routers_own_time(fake: FakeBackend) -> None:
    fake.control(no_responses=True, response_delay=0.3)  # the backend's time must not count
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))
    async with served(app) as url:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
        raw = await sdk.responses.with_raw_response.create(model="m-chat", input="hi")
        assert raw.headers["x-slm-converted-from"].startswith("chat-completions")
        assert 0 < float(raw.headers["x-slm-overhead-ms"]) < 100
        claude = anthropic.AsyncAnthropic(base_url=url, api_key="-", max_retries=0)
        message = await claude.messages.with_raw_response.create(
            model="m-chat", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.headers["x-slm-converted-from"].startswith("chat-completions")
        assert 0 < float(message.headers["x-slm-overhead-ms"]) < 100
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"model": "m-chat", "input": "hi", "stream": True}
            async with client.stream("POST", "/v1/responses", json=body) as stream:
                assert stream.status_code == 200
                assert 0 < float(stream.headers["x-slm-overhead-ms"]) < 100
                await stream.aread()
        await sdk.close()
        await claude.close()


async def test_the_clients_upload_time_is_not_the_routers_own(fake: FakeBackend) -> None:
    app = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))

    async def slow_upload() -> AsyncIterator[bytes]:
        yield CHAT_BYTES[:10]
        await asyncio.sleep(0.4)  # the client pauses mid-body: its time, not the router's
        yield CHAT_BYTES[10:]

    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        headers = {"content-type": "application/json", "content-length": str(len(CHAT_BYTES))}
        response = await client.post("/v1/chat/completions", content=slow_upload(), headers=headers)
    assert response.status_code == 200
    assert 0 < float(response.headers["x-slm-overhead-ms"]) < 100
    assert "x-slm-queue-ms" not in response.headers


@pytest.mark.parametrize("told", [False, True], ids=["watcher-task", "server-callback"])
async def test_work_after_the_last_byte_is_not_taken_for_a_client_leaving(
    fake: FakeBackend, told: bool
) -> None:
    """After the answer is complete a server says http.disconnect on receive() (uvicorn
    and the router's own), or loses the connection and calls back (the router's own, told
    by the WATCH_DISCONNECT extension); the client did not leave early, so what runs after
    the final send (a log, metrics) must not be cancelled."""
    router = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))
    disconnect_seen = asyncio.Event()
    after_last_byte: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await router(scope, receive, send)
        if not told:  # as under another server: the request watches receive() in a task
            scope.pop("extensions", None)

        async def seen_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnect_seen.set()
            return message

        async def send_then_record(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                try:  # the client's connection closes now: that must not end this
                    if told:
                        await asyncio.sleep(0.3)
                    else:
                        async with asyncio.timeout(5):
                            await disconnect_seen.wait()
                    await asyncio.sleep(0)  # a cancel sent on that disconnect lands by here
                    after_last_byte.append("done")
                except asyncio.CancelledError:
                    after_last_byte.append("cancelled")
                    raise

        await router(scope, seen_receive, send_then_record)

    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        close = {"connection": "close"}  # the server closes it after the answer
        response = await client.post("/v1/chat/completions", json=CHAT, headers=close)
        assert response.status_code == 200
        await eventually(lambda: bool(after_last_byte), 5, "the work after the last byte")
    assert after_last_byte == ["done"]
