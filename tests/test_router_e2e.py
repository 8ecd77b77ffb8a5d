"""The router as a real subprocess, behind real sockets, driven by real clients."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from net import free_port, wait_until
from router_proc import RouterProcess


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(autouse=True)
def _reset(fake: FakeBackend) -> None:
    fake.control(reset=True)


@pytest.fixture(scope="module")
def router(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config: dict[str, Any] = {
        "models": {
            "chat": entry("m-chat", fake.port, default_timeout=5),
            "embed": entry("m-embed", fake.port, model_type="embeddings"),
            "twin_a": entry("m-twin", fake.port),
            "twin_b": entry("m-twin", free_port()),
        }
    }
    process = RouterProcess(config, Path(tmp_path_factory.mktemp("router")))
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def sdk(router: RouterProcess) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    try:
        yield client
    finally:
        client.close()


CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


def sse_events(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]


STREAM_BODY = {
    "model": "m-chat",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_stream_is_relayed_chunk_by_chunk(router: RouterProcess, fake: FakeBackend) -> None:
    fake.control(chunks=4, chunk_delay=0.25)
    arrivals: list[float] = []
    text = ""
    started = time.monotonic()
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=STREAM_BODY) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers.get_list("cache-control") == ["no-cache"]  # the fake sends one too
        assert "content-encoding" not in response.headers
        for piece in response.iter_text():
            arrivals.append(time.monotonic() - started)
            text += piece
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content.split() == ["tok0", "tok1", "tok2", "tok3"]
    # Unbuffered: the first event arrives long before the ~1.5 s stream ends.
    assert len(arrivals) >= 4
    assert arrivals[0] < arrivals[-1] - 0.5


def test_backend_dying_mid_stream_ends_with_an_error_event(
    router: RouterProcess, tmp_path: Path
) -> None:
    doomed = FakeBackend()
    doomed.start(["--die-mid-stream", "2"])
    config = {"models": {"chat": entry("m-chat", doomed.port)}}
    own_router = RouterProcess(config, tmp_path)
    try:
        own_router.start()
        response = httpx.post(f"{own_router.url}/v1/chat/completions", json=STREAM_BODY)
    finally:
        own_router.stop()
        doomed.stop()
    assert response.status_code == 200  # the stream had started
    events = sse_events(response.text)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "server_error"
    assert "broke off" in error["message"]


def test_client_disconnect_cancels_the_upstream_request(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(chunks=50, chunk_delay=0.2)
    before = fake.stats()["cancelled"]
    with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=STREAM_BODY) as response:
        next(response.iter_raw())  # the stream is flowing; now walk away
    wait_until(lambda: fake.stats()["cancelled"] > before, 3, "the backend to see the cancel")
    assert fake.stats()["in_flight"] == 0


def test_disconnect_during_a_plain_request_cancels_it_too(
    router: RouterProcess, fake: FakeBackend
) -> None:
    fake.control(response_delay=30)
    before = fake.stats()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=0.5)
    wait_until(lambda: fake.stats()["cancelled"] > before, 3, "the backend to see the cancel")


def test_client_leaving_at_once_still_cancels_the_upstream_request(
    router: RouterProcess, fake: FakeBackend
) -> None:
    """Gone as soon as its request is sent: noticed all the same. The router may see the
    close before it has read the body (then nothing goes to the backend), or after it
    sent the request on (then the backend sees it cancelled); never left running."""
    fake.control(response_delay=30)
    before = fake.stats()
    body = json.dumps(CHAT).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", router.port)) as client:
        client.sendall(head + body)  # and closed at once

    def settled() -> bool:
        now = fake.stats()
        reached = now["requests"] > before["requests"]
        return now["in_flight"] == 0 and (not reached or now["cancelled"] > before["cancelled"])

    time.sleep(0.5)  # a request on its way to the backend has got there by now
    wait_until(settled, 3, "the request to be dropped, or cancelled at the backend")


def test_openai_sdk_lists_models(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert ids.count("m-chat") == 1 and "m-embed" in ids


def test_openai_sdk_chat(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="m-chat", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.role == "assistant"
    assert "ping" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_openai_sdk_streamed_chat(sdk: openai.OpenAI, fake: FakeBackend) -> None:
    fake.control(chunks=3)
    stream = sdk.chat.completions.create(
        model="m-chat", messages=[{"role": "user", "content": "ping"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).split() == ["tok0", "tok1", "tok2"]


def test_openai_sdk_embeddings(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="m-embed", input=["one", "two"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding


def test_openai_sdk_typed_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "m-chat" in not_found.value.message
    with pytest.raises(openai.ConflictError):
        sdk.chat.completions.create(model="m-twin", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="m-chat", input="x")
