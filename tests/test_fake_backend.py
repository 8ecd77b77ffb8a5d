"""The fake backend itself: endpoints, switches and the FakeBackend helper.

The supervisor and router tests rely on all of this, so it is checked against a
real subprocess here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fake_backend_proc import FakeBackend, running_fake_backend
from net import wait_until

CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeBackend]:
    with running_fake_backend() as fake:
        yield fake


@pytest.fixture
def fake(shared: FakeBackend) -> FakeBackend:
    """The module's backend, back to its startup switches with fresh counters."""
    shared.control(reset=True, reset_stats=True)
    return shared


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5) as http:
        yield http


def sse_data(response: httpx.Response) -> Iterator[str]:
    """The ``data:`` payloads of an SSE response, as they arrive."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


# --------------------------------------------------------------------- endpoints


def test_health_and_models(fake: FakeBackend, client: httpx.Client) -> None:
    health = client.get(f"{fake.url}/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    models = client.get(f"{fake.url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["fake-model"]


def test_chat_completion_echoes_the_last_user_message(
    fake: FakeBackend, client: httpx.Client
) -> None:
    body = {
        "model": "my-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    }
    response = client.post(f"{fake.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "my-model"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: second question"}
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_chat_stream_events_are_written_one_by_one(fake: FakeBackend, client: httpx.Client) -> None:
    fake.control(chunks=3, chunk_delay=0.1)
    body = {**STREAM, "stream_options": {"include_usage": True}}
    start = time.monotonic()
    events: list[str] = []
    arrivals: list[float] = []
    with client.stream("POST", f"{fake.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for data in sse_data(response):
            events.append(data)
            arrivals.append(time.monotonic() - start)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "tok0 tok1 tok2 "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    # role, 3 contents, stop, usage, [DONE]: 7 events, 0.1 s apart, each sent on its own.
    assert len(events) == 7
    assert arrivals[-1] - arrivals[0] >= 0.5
    assert arrivals[0] < arrivals[-1] - 0.4


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def test_chat_with_tools_calls_the_first_tool(fake: FakeBackend, client: httpx.Client) -> None:
    body = {**CHAT, "tools": TOOLS}
    reply = client.post(f"{fake.url}/v1/chat/completions", json=body).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"text": "hi"}

    fake.control(chunks=4)
    with client.stream(
        "POST", f"{fake.url}/v1/chat/completions", json={**body, "stream": True}
    ) as r:
        chunks = [json.loads(data) for data in sse_data(r) if data != "[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d]
    assert len([p for p in pieces if p]) == 4  # the arguments arrive in pieces
    assert json.loads("".join(pieces)) == {"text": "hi"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    answered = [*CHAT["messages"], {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    after = client.post(f"{fake.url}/v1/chat/completions", json={**body, "messages": answered})
    assert after.json()["choices"][0]["message"]["content"] == "tool said: 42"


def test_completions_plain_and_streamed(fake: FakeBackend, client: httpx.Client) -> None:
    plain = client.post(f"{fake.url}/v1/completions", json={"model": "c", "prompt": "abc"}).json()
    assert plain["object"] == "text_completion"
    assert plain["choices"][0]["text"] == "echo: abc"
    assert plain["choices"][0]["finish_reason"] == "stop"
    fake.control(chunks=2)
    body = {"model": "c", "prompt": "abc", "stream": True}
    with client.stream("POST", f"{fake.url}/v1/completions", json=body) as response:
        events = list(sse_data(response))
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert texts == ["tok0 ", "tok1 ", ""]


def test_embeddings_are_deterministic_unit_vectors(fake: FakeBackend, client: httpx.Client) -> None:
    url = f"{fake.url}/v1/embeddings"
    one = client.post(url, json={"model": "e", "input": "hello"}).json()
    many = client.post(url, json={"model": "e", "input": ["hello", "world"]}).json()
    assert one["object"] == "list" and one["model"] == "e"
    assert [d["index"] for d in many["data"]] == [0, 1]
    vec = one["data"][0]["embedding"]
    assert len(vec) == 8
    assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-9)
    assert many["data"][0]["embedding"] == vec  # same text, same vector
    assert many["data"][1]["embedding"] != vec
    packed = client.post(url, json={"input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(vec, abs=1e-6)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v1/reranking"])
def test_rerank_orders_by_word_overlap(fake: FakeBackend, client: httpx.Client, path: str) -> None:
    body = {
        "model": "r",
        "query": "red apple pie",
        "documents": ["blue sky", "red apple pie recipe", "an apple"],
    }
    data = client.post(f"{fake.url}{path}", json=body).json()
    assert data["object"] == "list" and data["model"] == "r"
    assert [r["index"] for r in data["results"]] == [1, 2, 0]
    scores = [r["relevance_score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    top = client.post(f"{fake.url}{path}", json={**body, "top_n": 1}).json()
    assert [r["index"] for r in top["results"]] == [1]


def test_responses_object_and_no_responses(fake: FakeBackend, client: httpx.Client) -> None:
    url = f"{fake.url}/v1/responses"
    data = client.post(url, json={"model": "m", "input": "ping"}).json()
    assert data["id"].startswith("resp_")
    assert (data["object"], data["status"], data["model"]) == ("response", "completed", "m")
    (message,) = data["output"]
    assert (message["type"], message["role"], message["status"]) == (
        "message",
        "assistant",
        "completed",
    )
    assert message["content"] == [{"type": "output_text", "text": "echo: ping", "annotations": []}]
    assert data["usage"]["total_tokens"] > 0
    fake.control(no_responses=True)
    assert client.post(url, json={"model": "m", "input": "ping"}).status_code == 404


# ---------------------------------------------------------------------- switches


@pytest.mark.parametrize(
    ("status", "type_"), [(503, "server_error"), (400, "invalid_request_error")]
)
def test_fail_status(fake: FakeBackend, client: httpx.Client, status: int, type_: str) -> None:
    fake.control(fail_status=status)
    for path, body in [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", STREAM),
        ("/v1/embeddings", {"input": "x"}),
    ]:
        response = client.post(f"{fake.url}{path}", json=body)
        assert response.status_code == status
        assert response.json() == {
            "error": {"message": "fake failure", "type": type_, "param": None, "code": "fake_error"}
        }
    assert client.get(f"{fake.url}/health").status_code == 200


def test_hang_until_the_client_gives_up(fake: FakeBackend, client: httpx.Client) -> None:
    fake.control(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{fake.url}/v1/chat/completions", json=CHAT, timeout=0.3)
    fake.wait_stats(cancelled=1, in_flight=0, completed=0)


def test_client_leaving_mid_stream_is_counted_cancelled(
    fake: FakeBackend, client: httpx.Client
) -> None:
    fake.control(chunks=50, chunk_delay=0.2)
    with client.stream("POST", f"{fake.url}/v1/chat/completions", json=STREAM) as response:
        next(sse_data(response))  # flowing; now walk away
    fake.wait_stats(cancelled=1, in_flight=0, completed=0)


async def test_response_delay_and_max_in_flight(fake: FakeBackend) -> None:
    fake.control(response_delay=0.3)
    start = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        responses = await asyncio.gather(
            *(http.post(f"{fake.url}/v1/chat/completions", json=CHAT) for _ in range(3))
        )
    elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert 0.3 <= elapsed < 0.9  # concurrent, each delayed
    stats = await fake.wait_stats_async(completed=3, in_flight=0)
    assert stats["max_in_flight"] == 3


def test_loading_via_control(fake: FakeBackend, client: httpx.Client) -> None:
    assert fake.control(loading=True)["loading"] is True
    health = client.get(f"{fake.url}/health")
    assert health.status_code == 503
    assert health.json() == {
        "error": {"message": "Loading model", "type": "unavailable_error", "code": 503}
    }
    fake.control(loading=False)
    assert client.get(f"{fake.url}/health").status_code == 200


def test_last_request_and_stats(fake: FakeBackend, client: httpx.Client) -> None:
    raw = '{"model": "x",  "messages": [{"role": "user", "content": "raw"}]}'
    response = client.post(
        f"{fake.url}/v1/chat/completions?a=1",
        content=raw,
        headers={"Content-Type": "application/json", "X-Test-Header": "yes"},
    )
    assert response.json()["choices"][0]["message"]["content"] == "echo: raw"
    client.get(f"{fake.url}/health")  # neither /health ...
    fake.stats()  # ... nor /_fake/* is recorded
    seen = fake.last_request()
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/v1/chat/completions", "a=1")
    assert seen["headers"]["x-test-header"] == "yes"
    assert seen["body"] == raw
    assert fake.stats() == {
        "requests": 1,
        "in_flight": 0,
        "max_in_flight": 1,
        "cancelled": 0,
        "completed": 1,
    }
    fake.control(reset_stats=True)
    assert fake.stats()["requests"] == 0
    with pytest.raises(AssertionError, match="not received"):
        fake.last_request()


def test_control_validates_and_resets(fake: FakeBackend, client: httpx.Client) -> None:
    url = f"{fake.url}/_fake/control"
    assert client.post(url, json={"no_such_switch": 1}).status_code == 400
    assert client.post(url, json={"chunks": "many"}).status_code == 400
    assert client.post(url, json={"hang": 1}).status_code == 400
    changed = fake.control(chunks=2, chunk_delay=1, die_mid_stream=None)
    assert (changed["chunks"], changed["chunk_delay"]) == (2, 1.0)
    assert fake.control() == changed  # {} changes nothing
    restored = fake.control(reset=True)
    assert (restored["chunks"], restored["chunk_delay"]) == (5, 0.0)
    assert client.get(url).json() == restored


# --------------------------------------------------- startup flags, own processes


def test_startup_flags_are_the_reset_defaults() -> None:
    args = ["--model-name", "m", "--chunks", "2", "--embedding-dim", "4"]
    with running_fake_backend([*args, "--no-responses", "--hang"]) as fake:
        url = fake.url
        with httpx.Client(trust_env=False, timeout=5) as http:
            assert http.get(f"{url}/v1/models").json()["data"][0]["id"] == "m"
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{url}/v1/chat/completions", json=CHAT, timeout=0.3)
            fake.control(hang=False, chunks=9)
            vec = http.post(f"{url}/v1/embeddings", json={"input": "x"}).json()["data"][0]
            assert len(vec["embedding"]) == 4
            assert http.post(f"{url}/v1/responses", json={"input": "x"}).status_code == 404
            assert fake.control(reset=True)["chunks"] == 2
            assert fake.control()["hang"] is True


def test_loading_seconds_then_healthy() -> None:
    with running_fake_backend(["--loading-seconds", "0.5"]) as fake:
        assert httpx.get(f"{fake.url}/health").status_code == 503
        wait_until(lambda: httpx.get(f"{fake.url}/health").status_code == 200, 5, "loading end")
    assert not fake.alive()  # stopped by SIGTERM on leaving the block
    fake.stop()  # idempotent


def test_die_mid_stream_kills_the_process() -> None:
    with running_fake_backend(["--die-mid-stream", "2"]) as fake:
        events: list[dict[str, Any]] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", f"{fake.url}/v1/chat/completions", json=STREAM) as response,
        ):
            events.extend(json.loads(data) for data in sse_data(response))
        contents = [e["choices"][0]["delta"].get("content") for e in events]
        assert contents == ["", "tok0 ", "tok1 "]  # role delta, then K=2 chunks, then death
        assert fake.returncode(timeout=5) == 1
        assert not fake.alive()


def test_ignore_sigterm_needs_sigkill() -> None:
    fake = FakeBackend().start(["--ignore-sigterm"])
    try:
        os.kill(fake.pid, signal.SIGTERM)
        # An ignored signal is discarded on delivery: answering afterwards proves survival.
        assert httpx.get(f"{fake.url}/health").status_code == 200
        assert fake.returncode(timeout=0.1) is None
        os.kill(fake.pid, signal.SIGKILL)
        assert fake.returncode(timeout=5) == -signal.SIGKILL
    finally:
        fake.stop()
    assert not fake.alive()


def test_start_failure_is_reported_quickly() -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="did not start"):
        FakeBackend().start(["--no-such-flag"])
    assert time.monotonic() - start < 5
