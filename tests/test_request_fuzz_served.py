"""The fuzz test's bodies through a real uvicorn server, and HTTP framing a client can break.

The in-process fuzz test (test_request_fuzz.py) never meets what only a socket carries:
uvicorn's own parsing, a body that ends before its Content-Length, chunked framing with
bad sizes, a client that declares a body and then sends nothing. Here a smaller set of
generated bodies goes over loopback, then raw requests with broken framing. For each:
no 5xx, the body budget given back once the connection has gone, and the router still
answering other clients (a chat request meanwhile, /health and a chat request after).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_backend_proc import FakeBackend
from form_bodies import FORMS, form_requests
from net import eventually
from router_served import served
from slm_server.router.app import RouterApp
from test_request_fuzz import BASES, FUZZ, bodies, check, fuzz_config

CHAT = json.dumps({"model": "chat-bare", "messages": [{"role": "user", "content": "hi"}]})
READ_TIMEOUT_S = 10
T = TypeVar("T")


class ServedRouter:
    """The app under uvicorn on loopback and a client for it, usable from synchronous tests."""

    def __init__(self, full: FakeBackend, bare: FakeBackend) -> None:
        self.runner = asyncio.Runner()
        self.app = RouterApp(fuzz_config(full, bare))
        self._serving: AbstractAsyncContextManager[str] = served(self.app)
        self.url = self.runner.run(self._serving.__aenter__())
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(work)

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.run(self._serving.__aexit__(None, None, None))
        self.runner.run(self.app.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def full() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        backend.control(messages=True)
        yield backend


@pytest.fixture(scope="module")
def bare() -> Iterator[FakeBackend]:
    with FakeBackend().start(["--no-responses"]) as backend:
        yield backend


@pytest.fixture(scope="module")
def router(full: FakeBackend, bare: FakeBackend) -> Iterator[ServedRouter]:
    served_router = ServedRouter(full, bare)
    try:
        yield served_router
    finally:
        served_router.close()


@pytest.fixture(autouse=True)
def _still_healthy(router: ServedRouter) -> Iterator[None]:
    yield
    router.run(_healthy_afterwards(router))


async def _healthy_afterwards(router: ServedRouter) -> None:
    # every body's bytes given back once its connection has gone
    await eventually(lambda: router.app.bodies.in_use == 0, 5, "the body budget to empty")
    assert (await router.client.get("/health")).status_code == 200
    await _chat_answers(router.client)


async def _chat_answers(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    answer = await client.post("/v1/chat/completions", content=CHAT, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo: hi"


# ------------------------------------------------------------------ generated bodies


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_generated_bodies_over_a_socket(router: ServedRouter, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(BASES)))
    body = data.draw(bodies(path))
    headers = {"content-type": "application/json"}
    check(path, router.run(router.client.post(path, content=body, headers=headers)))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_generated_forms_over_a_socket(router: ServedRouter, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(FORMS)))
    request = data.draw(form_requests(path))
    headers = {b"content-type": request.content_type}
    check(path, router.run(router.client.post(path, content=request.body, headers=headers)))


# ------------------------------------------------------------------ broken framing

REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\n"
KEEP_ALIVE = REQUEST_LINE + b"host: router\r\ncontent-type: application/json\r\n"
HEAD = KEEP_ALIVE + b"connection: close\r\n"  # the server closes once it has answered
BODY = CHAT.encode()
WHOLE = b"content-length: %d\r\n\r\n" % len(BODY) + BODY
CHUNKED = HEAD + b"transfer-encoding: chunked\r\n\r\n"
# Requests the client leaves unfinished, then closes its side: any answer is not a 5xx.
CUT_SHORT = {
    "shorter than its content-length": HEAD + b"content-length: 100\r\n\r\n" + BODY[:10],
    "a large declared length, a little of it": HEAD + b"content-length: 1000000\r\n\r\n" + BODY,
    "chunks with no last chunk": CHUNKED + b"%x\r\n" % len(BODY) + BODY + b"\r\n",
    "a chunk cut short": CHUNKED + b"ffff\r\nab",
    "expects 100-continue, then sends nothing": (
        HEAD + b"expect: 100-continue\r\ncontent-length: 50\r\n\r\n"
    ),
}
# Whole requests, framed badly or unusually: each is answered, and not with a 5xx.
ANSWERED = {
    "a chunk size that is not hex": CHUNKED + b"zz\r\nab\r\n0\r\n\r\n",
    "a chunk size beyond any length": CHUNKED + b"ffffffffffffffffffff\r\nab\r\n",
    "a negative chunk size": CHUNKED + b"-5\r\nab\r\n0\r\n\r\n",
    "a chunk longer than its size": CHUNKED + b"3\r\n" + BODY + b"\r\n0\r\n\r\n",
    "a chunk extension and a trailer": (
        CHUNKED + b"%x;ext=1\r\n" % len(BODY) + BODY + b"\r\n0\r\nx-trailer: t\r\n\r\n"
    ),
    "content-length and chunked both": (
        HEAD + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two content-lengths that disagree": HEAD + b"content-length: 5\r\n" + WHOLE,
    "a content-length that is not a number": HEAD + b"content-length: 1e3\r\n\r\n" + BODY,
    "a negative content-length": HEAD + b"content-length: -1\r\n\r\n" + BODY,
    "more body than its content-length": (
        HEAD + b"content-length: %d\r\n\r\n" % (len(BODY) - 1) + BODY + b"garbage\r\n\r\n"
    ),
    "a header line with no colon": HEAD + b"broken header\r\ncontent-length: 0\r\n\r\n",
    "LF line ends only": (HEAD + WHOLE).replace(b"\r\n", b"\n"),
    "HTTP/1.0, the body's end not declared": HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")
    + b"\r\n"
    + BODY,
    "two requests pipelined": KEEP_ALIVE + WHOLE + HEAD + WHOLE,  # both answered
    "an absolute-form target": HEAD.replace(b"/v1/", b"http://router/v1/", 1) + WHOLE,
    "a query of bytes that are not UTF-8": HEAD.replace(b"completions", b"completions?%ff=%c3")
    + WHOLE,
    "a header value that is not ASCII": HEAD + b"x-odd: \xff\xfe\r\n" + WHOLE,
}


@pytest.mark.parametrize("request_bytes", CUT_SHORT.values(), ids=CUT_SHORT.keys())
def test_a_request_cut_short_is_never_a_5xx(router: ServedRouter, request_bytes: bytes) -> None:
    statuses = router.run(_send_raw(router.url, request_bytes, half_close=True))
    assert all(status < 500 for status in statuses), statuses


@pytest.mark.parametrize("request_bytes", ANSWERED.values(), ids=ANSWERED.keys())
def test_odd_framing_is_answered_and_never_with_a_5xx(
    router: ServedRouter, request_bytes: bytes
) -> None:
    statuses = router.run(_send_raw(router.url, request_bytes, half_close=False))
    assert statuses, "no answer"
    assert all(status < 500 for status in statuses), statuses


def test_a_body_declared_and_never_sent_holds_up_no_one_else(router: ServedRouter) -> None:
    """While a client sits on a declared 1 MB body, others are served; when it goes, its
    bytes are given back (the autouse check) and it was never answered with a 5xx."""

    async def scenario() -> None:
        host, port = router.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(HEAD + b"content-length: 1000000\r\n\r\n")
        await writer.drain()
        await eventually(lambda: router.app.bodies.in_use > 0, 5, "the body to be taken")
        await _chat_answers(router.client)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
        writer.close()
        assert all(status < 500 for status in _statuses(answer)), answer

    router.run(scenario())


async def _send_raw(url: str, request_bytes: bytes, *, half_close: bool) -> list[int]:
    """The statuses of what the server answers ``request_bytes`` with, read until it closes
    the connection; with ``half_close``, once the client has closed its side."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request_bytes)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return _statuses(await asyncio.wait_for(reader.read(), READ_TIMEOUT_S))
    finally:
        writer.close()


def _statuses(answer: bytes) -> list[int]:
    # a status line may follow the previous answer's body with no line break between them
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]
