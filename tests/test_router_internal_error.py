"""A bug in the router is a 500 in the path's error shape, logged; never uvicorn's text/plain."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from config_builder import entry, make_config
from slm_server.router.app import RouterApp
from slm_server.router.asgi import Receive, Scope
from slm_server.router.metrics import RequestRecord

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
SECRET = "secret detail of the bug"


class Broken(RouterApp):
    """Fails inside dispatch, before or after the answer's status line went out."""

    after_start: bytes | None = None  # the content type of a started answer, or None

    async def _dispatch(
        self, scope: Scope, receive: Receive, sent: RequestRecord, *keys: bytes | None
    ) -> None:
        if scope["path"] == "/health":
            return await super()._dispatch(scope, receive, sent, *keys)
        send = sent.send
        if self.after_start is not None:
            headers = [(b"content-type", self.after_start)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise RuntimeError(SECRET)


@pytest.fixture
async def app() -> AsyncIterator[Broken]:
    broken = Broken(make_config({"chat": entry("m-chat", 1)}))
    yield broken
    await broken.aclose()


def client(app: RouterApp) -> httpx.AsyncClient:
    # Without raising app exceptions the transport answers as a server would: 500 text/plain.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://router")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
async def test_a_bug_is_a_500_in_the_openai_envelope(
    app: Broken, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="slm_server.router.app"):
        async with client(app) as http:
            response = await http.post(path, json=CHAT)
            health = await http.get("/health")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert SECRET not in response.text
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])  # with traceback
    assert health.status_code == 200


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_bug_is_a_500_in_anthropic_shape_on_its_paths(app: Broken, path: str) -> None:
    async with client(app) as http:
        response = await http.post(path, json=CHAT)
    assert response.status_code == 500
    body: dict[str, Any] = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert SECRET not in response.text


async def test_a_bug_after_a_stream_started_ends_it_with_an_error_event(app: Broken) -> None:
    app.after_start = b"text/event-stream"
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
        anthropic = await http.post("/v1/messages", json=CHAT)
    assert response.status_code == 200
    *_, last = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "internal_error"
    assert anthropic.text.endswith("\n\n")
    assert "event: error\n" in anthropic.text and SECRET not in anthropic.text
