"""Request ids: the client's own when sane, else made; returned on every answer, errors
included, and forwarded to the backend in place of the client's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from fake_backend_proc import FakeBackend
from net import free_port
from router_served import router_for
from scripted_backend import scripted_backend
from slm_server.router.asgi import Headers
from slm_server.router.request_head import read_head
from slm_server.router.request_id import RequestIds

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


def id_of(headers: Headers) -> bytes:
    """What the router does with a request's headers: its id read, then kept or made."""
    return RequestIds().given(read_head(headers)[0])


async def forwarded_ids(fake: FakeBackend) -> list[str]:
    seen = await asyncio.to_thread(fake.last_request)
    return [value for name, value in seen["header_list"] if name == "x-request-id"]


@pytest.mark.parametrize(
    "sent", ["a", "trace-01.2:x_Y", "A" * 128, "4f3a9b2c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"]
)
def test_a_sane_id_is_kept(sent: str) -> None:
    assert id_of([(b"x-request-id", sent.encode())]) == sent.encode()


@pytest.mark.parametrize(
    "sent", [b"", b"has space", b"A" * 129, b'quote"d', b"semi;colon", b"\xc3\xa9"]
)
def test_an_insane_id_is_replaced_by_a_made_one(sent: bytes) -> None:
    made = id_of([(b"x-request-id", sent)])
    assert made != sent
    assert re.fullmatch(rb"[0-9a-f]{16}", made)


def test_made_ids_differ_within_a_process_and_between_processes() -> None:
    ids, other = RequestIds(), RequestIds()
    made = {ids.new() for _ in range(1000)} | {other.new() for _ in range(1000)}
    assert len(made) == 2000


async def test_the_clients_id_is_returned_and_forwarded(fake: FakeBackend) -> None:
    async with router_for(fake.port) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-7"}
        )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == ["client-7"]
    assert await forwarded_ids(fake) == ["client-7"]


async def test_without_an_id_one_is_made_returned_and_forwarded(fake: FakeBackend) -> None:
    async with router_for(fake.port) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)
        forwarded = await forwarded_ids(fake)
        second = await client.post("/v1/chat/completions", json=CHAT)
    made = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    assert forwarded == [made]
    assert second.headers["x-request-id"] != made


async def test_an_insane_id_is_replaced_on_both_sides(fake: FakeBackend) -> None:
    async with router_for(fake.port) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "two words"}
        )
    made = response.headers["x-request-id"]
    assert made != "two words"
    assert await forwarded_ids(fake) == [made]


async def test_a_backends_own_id_gives_way_to_the_requests() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: backend-9\r\n"
        b"content-length: 2\r\n\r\n{}"
    )
    async with scripted_backend(answer) as port, router_for(port) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-9"}
        )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == ["client-9"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/chat/completions", 404),
        ("GET", "/v1/chat/completions", 405),
        ("GET", "/nowhere", 404),
    ],
)
async def test_error_answers_carry_the_id(
    fake: FakeBackend, method: str, path: str, status: int
) -> None:
    async with router_for(fake.port) as client:
        response = await client.request(
            method, path, json={**CHAT, "model": "nope"}, headers={"x-request-id": "err-1"}
        )
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert response.headers["x-request-id"] == "err-1"


async def test_a_backend_that_is_down_gets_a_503_with_the_id() -> None:
    async with router_for(free_port()) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "down-1"}
        )
    assert response.status_code == 503
    assert response.headers["x-request-id"] == "down-1"
