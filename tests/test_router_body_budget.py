"""Bytes of request bodies held at once, across all requests: bounded by the router.

The real router over real sockets, in front of the fake backend. Uploads are written
with raw sockets so that one can stay half-sent, or be dropped mid-way, as a real
impatient client does.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

# A budget of 4 MiB with bodies of at most 3 MiB: one upload of 2.5 MiB in flight
# leaves no room for a second. (Bodies up to 1 MiB have a reserve of their own.)
_BUDGET_MB = 4
_UPLOAD = 2560 * 1024
# How long the impatient router waits for a body that stops arriving.
_BODY_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


def started(
    fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory, **settings: float
) -> Iterator[RouterProcess]:
    config = {
        "models": {"embed": entry("m-embed", fake.port, model_type="embeddings")},
        "router": {"max_body_mb": 3, "max_inflight_body_mb": _BUDGET_MB, **settings},
    }
    process = RouterProcess(config, tmp_path_factory.mktemp("budget"))
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def router(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    yield from started(fake, tmp_path_factory)


@pytest.fixture(scope="module")
def impatient(
    fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    yield from started(fake, tmp_path_factory, body_timeout_s=_BODY_TIMEOUT_S)


def embeddings_body(size: int) -> bytes:
    """An embeddings request of exactly ``size`` bytes, ``model`` last (as the SDK sends)."""
    head, tail = b'{"input": "', b'", "model": "m-embed"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def start_upload(
    router: RouterProcess, body: bytes, sent: int, *, chunked: bool = False
) -> socket.socket:
    """A connection that has sent the headers and ``sent`` bytes of ``body``, and waits.

    ``chunked``: no declared length (the bytes sent, if any, as one chunk)."""
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=5)
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {len(body)}"
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
        f"{framing}\r\n\r\n"
    )
    part = body[:sent]
    if chunked and part:
        part = b"%x\r\n%s\r\n" % (len(part), part)
    sock.sendall(head.encode() + part)
    return sock


def answer_of(sock: socket.socket, within_s: float) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer on ``sock``, read until the server closes
    it or the body is whole (at most ``within_s``)."""
    sock.settimeout(within_s)
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < _length(raw):
        piece = sock.recv(65536)
        if not piece:
            break
        raw += piece
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def _length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 1 << 62


def post(router: RouterProcess, body: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{router.url}/v1/embeddings", content=body, headers=headers, timeout=10)


def until_status(
    router: RouterProcess, body: bytes, status: int, within_s: float
) -> httpx.Response:
    """Post ``body`` until the answer has ``status``, for at most ``within_s``.

    The router sees another upload a moment after it was written: there is no event
    to wait for from outside, so this polls, with a deadline.
    """
    deadline = time.monotonic() + within_s
    while True:
        response = post(router, body)
        if response.status_code == status or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert response.status_code == status, response.text
    return response


def test_an_upload_beyond_the_budget_is_503_with_retry_after(router: RouterProcess) -> None:
    waiting = start_upload(router, embeddings_body(_UPLOAD), sent=1024)
    try:
        response = until_status(router, embeddings_body(_UPLOAD), 503, within_s=5)
    finally:
        waiting.close()
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "max_inflight_body_mb" in error["message"]


def test_uploads_that_left_mid_way_give_their_bytes_back(router: RouterProcess) -> None:
    # Each of these leaves with most of its body unsent; were their bytes still counted,
    # no upload of this size would ever be accepted again.
    for _ in range(3):
        leaving = start_upload(router, embeddings_body(_UPLOAD), sent=_UPLOAD // 2)
        leaving.close()
    response = until_status(router, embeddings_body(_UPLOAD), 200, within_s=5)
    assert len(response.json()["data"]) == 1


def test_answered_and_refused_uploads_give_their_bytes_back(router: RouterProcess) -> None:
    unknown_model = embeddings_body(_UPLOAD).replace(b'"m-embed"', b'"nope---"')
    truncated = embeddings_body(_UPLOAD)[:-2]
    # Any of these keeping its bytes would leave the next one no room: a 503.
    for _ in range(3):
        assert post(router, embeddings_body(_UPLOAD)).status_code == 200
        assert post(router, unknown_model).status_code == 404
        assert post(router, truncated).status_code == 400


def test_a_small_request_goes_through_while_large_uploads_fill_the_budget(
    router: RouterProcess,
) -> None:
    large = start_upload(router, embeddings_body(_UPLOAD), sent=1024)
    second = 1200 * 1024  # still large: with the first, the budget has 0.3 MiB left
    larger = start_upload(router, embeddings_body(second), sent=1024)
    try:
        until_status(router, embeddings_body(second), 503, within_s=5)  # both are counted
        response = post(router, embeddings_body(900 * 1024))
        assert response.status_code == 200, response.text
    finally:
        large.close()
        larger.close()


@pytest.mark.parametrize(
    ("length", "chunked"),
    [(100, False), (_UPLOAD, False), (_UPLOAD, True)],
    ids=["small", "large", "chunked"],
)
def test_a_body_that_never_starts_gets_408_and_gives_its_bytes_back(
    impatient: RouterProcess, length: int, chunked: bool
) -> None:
    body = embeddings_body(length)
    waiting = start_upload(impatient, body, sent=0, chunked=chunked)
    try:
        status, answer = answer_of(waiting, within_s=_BODY_TIMEOUT_S + 5)
    finally:
        waiting.close()
    assert status == 408
    assert answer["error"]["code"] == "request_timeout"
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    # Were the stalled body's bytes still counted, this upload would not fit.
    assert post(impatient, embeddings_body(_UPLOAD)).status_code == 200


def test_a_trickling_upload_is_ended_once_its_grace_is_over(impatient: RouterProcess) -> None:
    body = embeddings_body(_UPLOAD)
    trickle = start_upload(impatient, body, sent=1)
    began = time.monotonic()
    try:
        # A byte every quarter second: never idle for the timeout, far below the rate.
        # The router ends it, closing the connection for the rest of the body.
        trickle.settimeout(0.25)
        for index in range(2, 200):
            try:
                trickle.sendall(body[index - 1 : index])
                trickle.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            break
        status, answer = answer_of(trickle, within_s=5)
    finally:
        trickle.close()
    assert status == 408
    assert "KiB/s" in answer["error"]["message"]
    assert time.monotonic() - began < _BODY_TIMEOUT_S + 5
