"""What the router forwards as an intermediary: the query, every end-to-end header, no
hop-by-hop ones (the fixed set and those named in ``Connection``), and ``Allow`` on 405s.

Real sockets on both sides: the router under uvicorn in this process, a client over TCP,
and the fake backend (or a scripted one, for response headers aiohttp would not send).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from fake_backend_proc import FakeBackend
from router_served import router_for
from scripted_backend import scripted_backend
from slm_server.router.proxy import forwarded_request_headers

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


async def last_request(fake: FakeBackend) -> dict[str, object]:
    return dict(await asyncio.to_thread(fake.last_request))


async def test_the_query_string_is_forwarded_as_sent(fake: FakeBackend) -> None:
    async with router_for(fake.port) as client:
        response = await client.post("/v1/chat/completions?api-version=2&q=a%20b", json=CHAT)
    assert response.status_code == 200, response.text
    seen = await last_request(fake)
    assert (seen["path"], seen["raw_query"]) == ("/v1/chat/completions", "api-version=2&q=a%20b")


async def test_repeated_request_headers_all_reach_the_backend(fake: FakeBackend) -> None:
    headers = [("x-tag", "one"), ("x-tag", "two"), ("x-single", "3")]
    async with router_for(fake.port) as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    seen = await last_request(fake)
    header_list = seen["header_list"]
    assert isinstance(header_list, list)
    assert [value for name, value in header_list if name == "x-tag"] == ["one", "two"]
    assert ["x-single", "3"] in header_list


async def test_headers_named_in_connection_are_not_forwarded(fake: FakeBackend) -> None:
    headers = {"connection": "keep-alive, x-hop", "x-hop": "for the router only", "x-end": "1"}
    async with router_for(fake.port) as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    header_list = (await last_request(fake))["header_list"]
    assert isinstance(header_list, list)
    names = {name for name, _ in header_list}
    assert "x-end" in names
    assert "x-hop" not in names


async def test_response_headers_named_in_connection_are_not_relayed() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nConnection: close, X-Private\r\n"
        b"X-Private: backend only\r\nx-public: 1\r\nx-public: 2\r\ncontent-length: 2\r\n\r\n{}"
    )
    async with scripted_backend(answer) as port, router_for(port) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    assert "x-private" not in response.headers
    assert response.headers.get_list("x-public") == ["1", "2"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/v1/chat/completions", "POST"), ("POST", "/health", "GET, HEAD")],
)
async def test_405_says_which_methods_are_allowed(
    fake: FakeBackend, method: str, path: str, allow: str
) -> None:
    async with router_for(fake.port) as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_forwarded_headers_policy() -> None:
    """Plain calls: every ``Connection`` header counts, tokens are trimmed and case-blind."""
    raw = [
        (b"connection", b"Keep-Alive , X-One"),
        (b"x-one", b"dropped"),
        (b"connection", b"x-two"),
        (b"x-two", b"dropped"),
        (b"x-keep", b"a"),
        (b"x-keep", b"b"),
        (b"host", b"router"),
        (b"content-length", b"2"),
        (b"accept-encoding", b"gzip"),
    ]
    assert forwarded_request_headers(raw) == [
        (b"x-keep", b"a"),
        (b"x-keep", b"b"),
        (b"accept-encoding", b"identity"),
        (b"content-type", b"application/json"),
    ]
    with_type = [(b"content-type", b"multipart/form-data; boundary=x")]
    assert forwarded_request_headers(with_type) == [*with_type, (b"accept-encoding", b"identity")]
