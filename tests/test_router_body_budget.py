"""Bytes of request bodies held at once, across all requests: bounded by the router.

The real router over real sockets, in front of the fake backend. Uploads are written
with raw sockets so that one can stay half-sent, or be dropped mid-way, as a real
impatient client does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

# A budget of 1 MiB with bodies of at most 0.75 MiB: one upload of 0.6 MiB in flight
# leaves no room for a second.
_BUDGET_MB = 1
_UPLOAD = 600 * 1024


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    fake = FakeBackend().start()
    config = {
        "models": {"embed": entry("m-embed", fake.port, model_type="embeddings")},
        "router": {"max_body_mb": 0.75, "max_inflight_body_mb": _BUDGET_MB},
    }
    process = RouterProcess(config, tmp_path_factory.mktemp("budget"))
    try:
        yield process.start()
    finally:
        process.stop()
        fake.stop()


def embeddings_body(size: int) -> bytes:
    """An embeddings request of exactly ``size`` bytes, ``model`` last (as the SDK sends)."""
    head, tail = b'{"input": "', b'", "model": "m-embed"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def start_upload(router: RouterProcess, body: bytes, sent: int) -> socket.socket:
    """A connection that has sent the headers and ``sent`` bytes of ``body``, and waits."""
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=5)
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


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
