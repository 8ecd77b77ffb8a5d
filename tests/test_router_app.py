"""The router in-process (ASGI transport) against a real fake-backend subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from net import free_port
from slm_server.router.app import RouterApp


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


@pytest.fixture(autouse=True)
def _reset(fake: FakeBackend) -> None:
    fake.control(reset=True)


CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


def models_for(fake: FakeBackend, **overrides: Any) -> dict[str, dict[str, Any]]:
    return {
        "chat": entry("m-chat", fake.port, **overrides),
        "embed": entry("m-embed", fake.port, model_type="embeddings"),
        "rank": entry("m-rank", fake.port, model_type="rerank"),
    }


async def client_for(app: RouterApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router")


@pytest.fixture
async def router(fake: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = RouterApp(make_config(models_for(fake)))
    async with await client_for(app) as client:
        yield client
    await app.aclose()


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def test_chat_is_routed_and_answered(router: httpx.AsyncClient) -> None:
    body = {"model": "m-chat", "messages": [{"role": "user", "content": "hello"}]}
    response = await router.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "m-chat"
    assert "hello" in answer["choices"][0]["message"]["content"]


async def test_body_reaches_backend_byte_for_byte(
    router: httpx.AsyncClient, fake: FakeBackend
) -> None:
    raw = (
        b'{ "messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9"}],\n'
        b'  "model" : "m-chat", "x_unknown": {"kept": [1, 2.50]}, "temperature": 0.70 }'
    )
    response = await router.post(
        "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json", "x-trace": "abc"},
    )
    assert response.status_code == 200
    seen = fake.last_request()
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"] == raw.decode()
    assert seen["headers"].get("X-Trace", seen["headers"].get("x-trace")) == "abc"


async def test_chat_template_kwargs_injected_only_when_absent(fake: FakeBackend) -> None:
    kwargs = {"enable_thinking": False}
    app = RouterApp(make_config(models_for(fake, chat_template_kwargs=kwargs)))
    async with await client_for(app) as client:
        plain = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=plain)).status_code == 200
        assert json.loads(fake.last_request()["body"])["chat_template_kwargs"] == kwargs

        own = {**plain, "chat_template_kwargs": {"enable_thinking": True}}
        assert (await client.post("/v1/chat/completions", json=own)).status_code == 200
        assert json.loads(fake.last_request()["body"])["chat_template_kwargs"] == {
            "enable_thinking": True
        }

        completion = {"model": "m-chat", "prompt": "hi"}
        assert (await client.post("/v1/completions", json=completion)).status_code == 200
        assert "chat_template_kwargs" not in json.loads(fake.last_request()["body"])

        fake.control(no_responses=True)  # converted to chat: the kwargs go in there too
        response = await client.post("/v1/responses", json={"model": "m-chat", "input": "hi"})
        assert response.headers["x-slm-converted-from"] == "chat-completions; reason=not-found"
        converted = json.loads(fake.last_request()["body"])
        assert "messages" in converted and converted["chat_template_kwargs"] == kwargs
    await app.aclose()


async def test_completions_embeddings_and_responses(router: httpx.AsyncClient) -> None:
    completion = await router.post("/v1/completions", json={"model": "m-chat", "prompt": "x"})
    assert completion.status_code == 200
    assert completion.json()["object"] == "text_completion"

    embeddings = await router.post("/v1/embeddings", json={"model": "m-embed", "input": ["a", "b"]})
    assert embeddings.status_code == 200
    assert [item["index"] for item in embeddings.json()["data"]] == [0, 1]

    responses = await router.post("/v1/responses", json={"model": "m-chat", "input": "hi"})
    assert responses.status_code == 200
    assert responses.json()["object"] == "response"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v1/reranking"])
async def test_rerank_on_every_spelling(router: httpx.AsyncClient, path: str) -> None:
    body = {"model": "m-rank", "query": "red apple", "documents": ["blue sky", "a red apple"]}
    response = await router.post(path, json=body)
    assert response.status_code == 200
    assert response.json()["results"][0]["index"] == 1


async def test_models_lists_enabled_entries_with_their_fields(fake: FakeBackend) -> None:
    models = {
        **models_for(fake),
        "off": entry("m-off", free_port(), enabled=False),
        "fn": entry("m-fn", fake.port, supports_function_calling=True, context_length=4096),
    }
    app = RouterApp(make_config(models))
    async with await client_for(app) as client:
        listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    by_id = {model["id"]: model for model in listing["data"]}
    assert set(by_id) == {"m-chat", "m-embed", "m-rank", "m-fn"}
    fn = by_id["m-fn"]
    assert fn["object"] == "model"
    assert (fn["backend"], fn["port"], fn["model_type"]) == ("llamacpp", fake.port, "lm")
    assert (fn["context_length"], fn["quantization"]) == (4096, "Q4_K_M")
    assert fn["supports_function_calling"] is True
    assert by_id["m-embed"]["model_type"] == "embeddings"


async def test_router_health(router: httpx.AsyncClient) -> None:
    response = await router.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "pid": os.getpid()}  # in-process here


async def test_unknown_model_is_404_listing_known_ids(router: httpx.AsyncClient) -> None:
    response = await router.post("/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    error = assert_envelope(response, 404, "not_found_error")
    assert "gpt-4" in error["message"]
    assert "m-chat" in error["message"] and "m-embed" in error["message"]
    assert error["param"] == "model"


async def test_shared_id_is_409(fake: FakeBackend) -> None:
    models = {"a": entry("twin", fake.port), "b": entry("twin", free_port())}
    app = RouterApp(make_config(models))
    async with await client_for(app) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "twin"})
    assert_envelope(response, 409, "conflict_error")
    await app.aclose()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"model": "m-chat", ', "not valid JSON"),
        (b'["m-chat"]', "JSON object"),
        (b'{"messages": []}', "model"),
        (b'{"model": 7}', "model"),
    ],
)
async def test_malformed_requests_are_400(
    router: httpx.AsyncClient, raw: bytes, fragment: str
) -> None:
    response = await router.post("/v1/chat/completions", content=raw)
    error = assert_envelope(response, 400, "invalid_request_error")
    assert fragment in error["message"]


async def test_endpoint_that_does_not_fit_the_model_type_is_400(
    router: httpx.AsyncClient,
) -> None:
    response = await router.post("/v1/embeddings", json={"model": "m-chat", "input": "x"})
    error = assert_envelope(response, 400, "invalid_request_error")
    assert "embeddings" in error["message"]


async def test_body_over_the_limit_is_413(fake: FakeBackend) -> None:
    app = RouterApp(make_config(models_for(fake), max_body_mb=0.001))  # ~1 KiB
    big = {"model": "m-chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    async with await client_for(app) as client:
        response = await client.post("/v1/chat/completions", json=big)
    assert_envelope(response, 413, "invalid_request_error")
    await app.aclose()


async def test_unknown_path_and_wrong_method(router: httpx.AsyncClient) -> None:
    assert_envelope(await router.post("/v1/nope", json={}), 404, "not_found_error")
    assert_envelope(await router.get("/v1/chat/completions"), 405, "invalid_request_error")


@pytest.mark.parametrize("status", [400, 422, 500, 503])
async def test_backend_error_passes_through(
    router: httpx.AsyncClient, fake: FakeBackend, status: int
) -> None:
    fake.control(fail_status=status)
    response = await router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "fake_error"  # the backend's, not ours


async def test_backend_not_running_is_503_with_retry_after() -> None:
    app = RouterApp(make_config({"gone": entry("m-gone", free_port())}))
    async with await client_for(app) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "m-gone"})
    error = assert_envelope(response, 503, "server_error")
    assert "Connection refused - backend not running" in error["message"]
    assert int(response.headers["retry-after"]) > 0
    await app.aclose()


async def test_backend_slower_than_default_timeout_is_504(fake: FakeBackend) -> None:
    fake.control(hang=True)
    app = RouterApp(make_config(models_for(fake, default_timeout=0.3)))
    async with await client_for(app) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_envelope(response, 504, "server_error")
    assert "0.3s" in error["message"]
    await app.aclose()


async def test_converted_request_to_a_backend_slower_than_default_timeout_is_504(
    fake: FakeBackend,
) -> None:
    # No /v1/responses (a 404 at once): the request is converted, and its chat hangs.
    fake.control(no_responses=True, hang=True)
    app = RouterApp(make_config(models_for(fake, default_timeout=0.3)))
    async with await client_for(app) as client:
        response = await client.post("/v1/responses", json={"model": "m-chat", "input": "hi"})
    error = assert_envelope(response, 504, "server_error")
    assert "0.3s ran out while waiting for the backend's answer" in error["message"]
    assert fake.last_request()["path"] == "/v1/chat/completions"
    await app.aclose()


async def test_concurrency_limit_queues_then_rejects_with_429(fake: FakeBackend) -> None:
    fake.control(response_delay=0.3)
    app = RouterApp(make_config(models_for(fake, max_concurrency=1), max_queue=1))
    body = {"model": "m-chat", "messages": [{"role": "user", "content": "q"}]}
    async with await client_for(app) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(3))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429]
    rejected = next(r for r in responses if r.status_code == 429)
    assert_envelope(rejected, 429, "rate_limit_error")
    assert int(rejected.headers["retry-after"]) >= 1
    assert fake.stats()["max_in_flight"] == 1
    await app.aclose()


async def test_stalled_stream_ends_with_an_in_band_timeout_error(fake: FakeBackend) -> None:
    fake.control(chunks=3, chunk_delay=1.0)
    app = RouterApp(make_config(models_for(fake, default_timeout=0.4)))
    async with await client_for(app) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await app.aclose()
    assert response.status_code == 200  # the stream had started before it stalled
    last = response.text.strip().splitlines()[-1]
    assert last.startswith("data: ")
    error = json.loads(last.removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("server_error", "timeout")
    assert "0.4s" in error["message"]


async def test_stalled_converted_stream_ends_in_its_own_dialect(fake: FakeBackend) -> None:
    fake.control(chunks=3, chunk_delay=1.0, no_responses=True)
    app = RouterApp(make_config(models_for(fake, default_timeout=0.4)))
    request = {"model": "m-chat", "input": "hi", "stream": True}
    async with await client_for(app) as client:
        response = await client.post("/v1/responses", json=request)
    await app.aclose()
    assert response.headers["x-slm-converted-from"] == "chat-completions; reason=not-found"
    events = [line for line in response.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "event: response.created"
    assert events[-1] == "event: response.failed"
    assert "sent nothing for 0.4s" in response.text


async def test_router_reports_its_own_time(router: httpx.AsyncClient, fake: FakeBackend) -> None:
    fake.control(response_delay=0.2)  # the backend's time must not count
    response = await router.post("/v1/chat/completions", json=CHAT)
    own_ms = float(response.headers["x-slm-overhead-ms"])
    assert 0 < own_ms < 100
    fake.control(chunks=2)
    async with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
        assert 0 < float(s.headers["x-slm-overhead-ms"]) < 100


def test_the_server_takes_the_garbage_collector_off_the_hot_path() -> None:
    """After start-up, start-up objects are frozen and young collections are rare.

    Run in a child process: the collector's settings are process-wide.
    """
    script = """
import asyncio, gc
from slm_server.router.app import RouterApp
from config_builder import entry, make_config

async def start():
    app = RouterApp(make_config({"a": entry("a", port=1)}), settle_gc=True)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = []
    async def receive():
        return next(messages)
    async def send(message):
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            print(gc.get_freeze_count() > 1000, gc.get_threshold()[0])
    await app(dict(type="lifespan"), receive, send)

asyncio.run(start())
"""
    tests_dir = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tests_dir, check=True
    )
    assert result.stdout.split() == ["True", "50000"]


@pytest.mark.parametrize(
    ("status", "reason", "remembered"),
    [(404, "not-found", True), (405, "method-not-allowed", True), (422, "unprocessable", False)],
)
async def test_only_an_absent_route_is_remembered_for_converting(
    fake: FakeBackend, status: int, reason: str, remembered: bool
) -> None:
    """A 422 can be a real validation error of a backend that has /v1/responses."""
    app = RouterApp(make_config(models_for(fake)))
    request = {"model": "m-chat", "input": "hi"}
    async with await client_for(app) as client:
        fake.control(responses_status=status)
        first = await client.post("/v1/responses", json=request)
        assert first.status_code == 200, first.text
        assert first.headers["x-slm-converted-from"] == f"chat-completions; reason={reason}"
        fake.control(responses_status=None)  # the route works now (or always did)
        second = await client.post("/v1/responses", json=request)
        assert second.status_code == 200, second.text
        if remembered:
            marker = second.headers["x-slm-converted-from"]
            assert marker == "chat-completions; reason=known-missing"
        else:
            assert "x-slm-converted-from" not in second.headers  # tried natively again
            assert fake.last_request()["path"] == "/v1/responses"
    await app.aclose()
