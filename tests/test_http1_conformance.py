"""What an HTTP/1.1 client relies on from the router's server protocol, on a real socket.

Each test serves a small purpose-built ASGI app through uvicorn with the protocol class
under test and speaks raw bytes to it. Where the protocols may legitimately differ (the
body of an error answer, whether a connection survives a 500), the assertions check
what a client can rely on and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from http1_served import (
    WAIT_S,
    Connection,
    CutShort,
    connected,
    request_bytes,
    served,
)
from net import eventually
from slm_server.router.asgi import Message, Receive, Scope, Send

PROTOCOLS: list[Any] = [pytest.param(HttpToolsProtocol, id="uvicorn")]
try:
    from slm_server.router.http1 import Http1Protocol  # type: ignore[import-not-found,unused-ignore]
except ModuleNotFoundError as missing:
    if missing.name != "slm_server.router.http1":
        raise  # it exists but cannot be imported: that is a failure, not an absence
else:
    PROTOCOLS.append(pytest.param(Http1Protocol, id="http1"))

Protocol = type[asyncio.Protocol]


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> Protocol:
    chosen: Protocol = request.param
    return chosen


async def read_all(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


def start(status: int = 200, length: int | None = None, *headers: tuple[bytes, bytes]) -> Message:
    sized = [(b"content-length", str(length).encode())] if length is not None else []
    return {"type": "http.response.start", "status": status, "headers": [*sized, *headers]}


def part(body: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def answer(send: Send, body: bytes, status: int = 200) -> None:
    await send(start(status, len(body)))
    await send(part(body))


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's body, or its method and path when it has none."""
    body = await read_all(receive)
    await answer(send, body or f"{scope['method']} {scope['path']}".encode())


async def slow_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """``echo``, a moment later: what is pipelined behind it is parsed meanwhile."""
    await asyncio.sleep(0.1)
    await echo(scope, receive, send)


def known_uvicorn_gap(protocol: Protocol, request: pytest.FixtureRequest, reason: str) -> None:
    """Expects uvicorn's protocol to fail this test (strictly: a fix shows up)."""
    if protocol is HttpToolsProtocol:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


# -- keep-alive and pipelining ------------------------------------------------------


async def test_two_requests_on_one_connection_are_both_answered_in_order(
    protocol: Protocol,
) -> None:
    clients: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(scope["client"])
        await echo(scope, receive, send)

    async with served(app, protocol) as server, connected(server.port) as client:
        first = await client.request("GET", "/one")
        second = await client.request("GET", "/two")
    assert (first.status, first.body) == (200, b"GET /one")
    assert (second.status, second.body) == (200, b"GET /two")
    assert clients[0] == clients[1], "the second request came on a new connection"


async def test_pipelined_requests_are_answered_in_order_with_their_bodies_intact(
    protocol: Protocol,
) -> None:
    # The first takes longest, so a server that answered as each finished would misorder.
    delays = {"/slow": 0.3, "/fast": 0.0, "/medium": 0.1}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(delays[scope["path"]])
        await echo(scope, receive, send)

    posted = bytes(range(256)) * 40
    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(
            request_bytes("GET", "/slow")
            + request_bytes("POST", "/fast", body=posted)
            + request_bytes("GET", "/medium")
        )
        answers = [await client.read_response() for _ in range(3)]
        assert await client.sends_nothing_for(0.1)
    assert [a.body for a in answers] == [b"GET /slow", posted, b"GET /medium"]


# -- request bodies -----------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, 1 << 20], ids=["1B", "1kB", "1MiB"])
async def test_a_content_length_body_is_echoed_exactly(protocol: Protocol, size: int) -> None:
    body = hashlib.shake_256(b"seed").digest(size)
    async with served(echo, protocol) as server, connected(server.port) as client:
        response = await client.request("POST", "/", body=body)
        again = await client.request("GET", "/after")
    assert response.status == 200
    assert response.body == body
    assert again.body == b"GET /after"


async def test_a_chunked_request_body_is_echoed_exactly(protocol: Protocol) -> None:
    pieces = [b"a", b"0123456789", bytes(range(256)) * 16, b"z" * 70000]
    wire = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    wire = wire.replace(b"1000\r\n", b"1000;name=value\r\n", 1)  # an extension, allowed
    async with served(echo, protocol) as server, connected(server.port) as client:
        response = await client.request(
            "POST", "/", "transfer-encoding: chunked", body=wire + b"0\r\n\r\n"
        )
        again = await client.request("GET", "/after")
    assert response.body == b"".join(pieces)
    assert again.body == b"GET /after"


# -- Expect: 100-continue ----------------------------------------------------------


async def test_100_continue_is_sent_only_once_the_app_reads_the_body(protocol: Protocol) -> None:
    called = asyncio.Event()
    may_read = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.set()
        await may_read.wait()
        await echo(scope, receive, send)

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(request_bytes("POST", "/", "expect: 100-continue", "content-length: 5"))
        await asyncio.wait_for(called.wait(), WAIT_S)
        assert await client.sends_nothing_for(0.2), "100 Continue before the app read"
        may_read.set()
        interim = await client.read_head()
        assert interim.status == 100
        assert interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
        await client.send(b"hello")
        response = await client.read_response()
    assert (response.status, response.body) == (200, b"hello")


async def test_no_100_continue_when_the_app_answers_without_reading(protocol: Protocol) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, b"no thanks", status=413)

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(request_bytes("POST", "/", "expect: 100-continue", "content-length: 5"))
        response = await client.read_response()
    assert (response.status, response.body) == (413, b"no thanks")


# -- HEAD, HTTP/1.0, Connection: close ----------------------------------------------


async def test_head_has_the_headers_and_no_body_and_the_connection_stays_usable(
    protocol: Protocol,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, b"hello world")  # a HEAD app may send the body: it is dropped

    async with served(app, protocol) as server, connected(server.port) as client:
        head = await client.request("HEAD", "/")
        after = await client.request("GET", "/")
    assert head.status == 200
    assert head.head.get("content-length") == "11"
    assert head.body == b""
    assert after.body == b"hello world", "the HEAD's body leaked onto the connection"


@pytest.mark.parametrize(
    "request_",
    [b"GET / HTTP/1.0\r\n\r\n", request_bytes("GET", "/", "connection: close")],
    ids=["http1.0", "connection-close"],
)
async def test_a_non_persistent_request_is_answered_then_closed(
    protocol: Protocol, request_: bytes
) -> None:
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(request_)
        response = await client.read_response()
        assert await client.closed_by_server(2), "the connection was left open"
    assert (response.status, response.body) == (200, b"GET /")


async def test_an_unsized_answer_to_http_1_0_is_delimited_by_the_close(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """An HTTP/1.0 client cannot read chunked framing (RFC 9112 section 6.1)."""
    known_uvicorn_gap(protocol, request, "uvicorn sends chunked framing to 1.0")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        await send(part(b"hello ", more=True))
        await send(part(b"world"))

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        head = await client.read_head()
        rest = await client.read_until_closed()
    assert not head.chunked
    assert head.get("content-length") in (None, "11")
    assert rest == b"hello world"


# -- response framing ----------------------------------------------------------------


async def test_an_unsized_answer_is_chunked_with_exact_framing(protocol: Protocol) -> None:
    pieces = [b"hello", b"", b" ", b"world!" * 50]  # an empty piece must not end the body

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        for piece in pieces:
            await send(part(piece, more=True))
        await send(part(b"", more=False))

    async with served(app, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/")
        after = await client.request("GET", "/")
    assert response.head.chunked
    assert response.head.get("content-length") is None
    assert response.body == b"".join(pieces)
    assert response.raw_body.endswith(b"\r\n0\r\n\r\n")
    assert b"12c\r\n" + b"world!" * 50 + b"\r\n" in response.raw_body.lower()
    assert after.body == response.body


async def test_a_sized_answer_is_sent_as_is(protocol: Protocol) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start(200, 11))
        await send(part(b"hello ", more=True))
        await send(part(b"world"))

    async with served(app, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/")
        after = await client.request("GET", "/")
    assert response.head.get("transfer-encoding") is None
    assert response.head.get("content-length") == "11"
    assert response.raw_body == b"hello world"
    assert after.raw_body == b"hello world", "bytes after the sized body"


# -- streaming, disconnects, back-pressure --------------------------------------------


async def test_a_stream_reaches_the_client_as_it_is_sent(protocol: Protocol) -> None:
    sent_at: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        for i in range(20):
            await send(part(b"event %d\n" % i, more=True))
            sent_at.append(time.monotonic())
            await asyncio.sleep(0.01)
        await send(part(b""))

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(request_bytes("GET", "/"))
        head = await client.read_head()
        first, _ = await client.read_chunk()
        first_at = time.monotonic()
        rest, _ = await client.read_body(head)
    assert head.chunked
    assert first == b"event 0\n"
    assert first + rest == b"".join(b"event %d\n" % i for i in range(20))
    assert first_at < sent_at[-1] - 0.1, "the first event arrived only with the last ones"


async def test_a_client_gone_mid_stream_is_told_to_the_app_and_later_sends_are_harmless(
    protocol: Protocol,
) -> None:
    """The app streams until ``receive()`` says the client left (as Starlette's
    StreamingResponse does), then sends a little more, as a relay that has not noticed."""
    streaming = asyncio.Event()
    closed_at: list[float] = []
    told_at: list[float] = []
    later_sends: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await send(start())

        async def stream() -> None:
            while True:
                await send(part(b"tick\n", more=True))
                streaming.set()
                await asyncio.sleep(0.01)

        streamer = asyncio.create_task(stream())
        try:
            told = await receive()
        finally:
            streamer.cancel()
        told_at.append(time.monotonic())
        assert told["type"] == "http.disconnect", told
        for message in (part(b"late\n", more=True), part(b"last")):
            try:
                await asyncio.wait_for(send(message), 1)
                later_sends.append("returned")
            except TimeoutError:
                later_sends.append("hung")
            except Exception as error:
                later_sends.append(f"raised {error!r}")

    async with served(app, protocol) as server:
        client = await Connection.open(server.port)
        await client.send(request_bytes("GET", "/"))
        await client.read_head()
        await asyncio.wait_for(streaming.wait(), WAIT_S)
        await client.read_chunk()
        await client.close()
        closed_at.append(time.monotonic())
        await eventually(lambda: len(later_sends) == 2, WAIT_S, "the app to finish")
    assert told_at[0] - closed_at[0] < 1.0
    assert later_sends == ["returned", "returned"]


async def test_a_client_gone_mid_upload_is_told_to_the_app(protocol: Protocol) -> None:
    first_part = asyncio.Event()
    told: list[tuple[str, float]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["more_body"] is True
        first_part.set()
        message = await receive()
        while message["type"] == "http.request":  # parts that arrived before the close
            message = await receive()
        told.append((message["type"], time.monotonic()))

    async with served(app, protocol) as server:
        client = await Connection.open(server.port)
        await client.send(request_bytes("POST", "/", "content-length: 100000", body=b"x" * 1000))
        await asyncio.wait_for(first_part.wait(), WAIT_S)
        await client.close()
        closed_at = time.monotonic()
        await eventually(lambda: bool(told), WAIT_S, "the app to hear of the disconnect")
    assert told[0][0] == "http.disconnect"
    assert told[0][1] - closed_at < 1.0


async def test_a_client_that_stops_reading_holds_the_app_back_until_it_reads(
    protocol: Protocol,
) -> None:
    piece_size, pieces = 64 * 1024, 1024  # 64 MiB
    sent = [0]
    finished = asyncio.Event()

    def piece(i: int) -> bytes:
        return bytes([i % 251]) * piece_size

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start(200, piece_size * pieces))
        for i in range(pieces):
            await send(part(piece(i), more=i < pieces - 1))
            sent[0] += piece_size
        finished.set()

    async with (
        served(app, protocol) as server,
        connected(server.port, receive_buffer=64 * 1024) as client,
    ):
        await client.send(request_bytes("GET", "/"))
        head = await client.read_head()
        await settled(lambda: sent[0])
        held_at = sent[0]
        assert not finished.is_set()
        assert held_at < 16 << 20, f"the server buffered {held_at >> 20} MiB for a stalled client"
        digest = hashlib.sha256()
        assert head.get("content-length") == str(piece_size * pieces)
        remaining = piece_size * pieces
        while remaining:
            data = await asyncio.wait_for(client.reader.read(min(remaining, 1 << 20)), WAIT_S)
            assert data, "the connection closed mid-body"
            digest.update(data)
            remaining -= len(data)
        await asyncio.wait_for(finished.wait(), WAIT_S)
    expected = hashlib.sha256()
    for i in range(pieces):
        expected.update(piece(i))
    assert digest.hexdigest() == expected.hexdigest()


async def settled(progress: Callable[[], int], quiet_s: float = 0.3) -> None:
    """Returns once ``progress()`` has not changed for ``quiet_s``."""
    deadline = time.monotonic() + WAIT_S
    last, since = progress(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the app never stopped making progress"
        await asyncio.sleep(0.05)
        if progress() != last:
            last, since = progress(), time.monotonic()


# -- malformed requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nx: a\x00b\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=[
        "request-line",
        "space-in-target",
        "header-without-colon",
        "space-in-header-name",
        "nul-in-header-value",
        "content-length-not-a-number",
        "content-lengths-differ",
        "chunk-size-not-hex",
    ],
)
async def test_a_malformed_request_gets_a_4xx_and_the_connection_closed(
    protocol: Protocol, request_: bytes
) -> None:
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(request_)
        response = await client.read_response()
        assert await client.closed_by_server(2), "the connection was left open"
    assert 400 <= response.status < 500
    assert response.head.get("date"), "a 4xx from a server with a clock carries a Date"


async def test_a_malformed_request_after_a_good_one_on_the_same_connection(
    protocol: Protocol,
) -> None:
    async with served(echo, protocol) as server, connected(server.port) as client:
        good = await client.request("GET", "/good")
        await client.send(b"NOT HTTP AT ALL\r\n\r\n")
        bad = await client.read_response()
        assert await client.closed_by_server(2)
    assert good.body == b"GET /good"
    assert 400 <= bad.status < 500


async def test_good_requests_pipelined_before_a_bad_one_are_answered_first(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    known_uvicorn_gap(protocol, request, "uvicorn answers only the 400")

    async with served(slow_echo, protocol) as server, connected(server.port) as client:
        await client.send(
            request_bytes("GET", "/first")
            + request_bytes("GET", "/second")
            + b"NOT HTTP AT ALL\r\n\r\n"
        )
        first = await client.read_response()
        second = await client.read_response()
        bad = await client.read_response()
        assert await client.closed_by_server(2)
    assert (first.body, second.body) == (b"GET /first", b"GET /second")
    assert 400 <= bad.status < 500


async def test_a_request_head_over_the_limit_gets_a_431_in_the_error_envelope(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    known_uvicorn_gap(protocol, request, "uvicorn reads a head of any size")
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(
            b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
        )
        response = await client.read_response()
        assert await client.closed_by_server(2)
    assert response.status == 431
    assert json.loads(response.body)["error"]["message"]
    assert response.head.get("date")


async def test_a_pipelined_request_whose_body_breaks_is_refused_after_the_one_before(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    known_uvicorn_gap(protocol, request, "uvicorn answers only the 400")

    async with served(slow_echo, protocol) as server, connected(server.port) as client:
        broken = request_bytes("POST", "/", "transfer-encoding: chunked", body=b"zz\r\nab\r\n")
        await client.send(request_bytes("GET", "/first") + broken)
        first = await client.read_response()
        bad = await asyncio.wait_for(client.read_response(), 3)  # not after a body timeout
        assert await client.closed_by_server(3)
    assert first.body == b"GET /first"
    assert 400 <= bad.status < 500


async def test_a_header_line_that_never_ends_is_cut_off_at_the_limit(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """httptools tells of a header only once its line ends: the bytes of a line still
    open count as they arrive, so it cannot grow past the limit."""
    known_uvicorn_gap(protocol, request, "uvicorn reads a head of any size")
    async with served(echo, protocol) as server, connected(server.port) as client:
        # A small send buffer: what the client has written is about what the server read.
        client.writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )
        sent = 0

        async def one_long_line() -> None:
            nonlocal sent
            await client.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-long: ")
            with contextlib.suppress(ConnectionError):
                while sent < 8 * 1024 * 1024:  # far past the limit, if nothing stops it
                    await client.send(b"a" * 16384)
                    sent += 16384

        sending = asyncio.create_task(one_long_line())
        try:
            response = await client.read_response()
            refused_at = sent
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
    assert response.status == 431
    assert refused_at < 1024 * 1024, f"{refused_at} bytes of one header line were taken"


async def test_too_many_headers_get_a_431(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    known_uvicorn_gap(protocol, request, "uvicorn takes any number of headers")
    many = [f"x-{index}: v" for index in range(1000)]
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(request_bytes("GET", "/", *many))
        response = await client.read_response()
        assert await client.closed_by_server(2)
    assert response.status == 431


async def test_an_upgrade_request_with_a_body_is_refused_not_served_empty(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """httptools hands an Upgrade request's body to the protocol it would switch to:
    served, the request would seem to have an empty body."""
    known_uvicorn_gap(protocol, request, "uvicorn serves it with an empty body")
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(
            request_bytes(
                "POST", "/", "connection: upgrade", "upgrade: h2c", body=b'{"model": "m"}'
            )
        )
        response = await client.read_response()
        assert await client.closed_by_server(2)
    assert response.status == 400
    assert "Upgrade" in json.loads(response.body)["error"]["message"]


async def test_an_upgrade_request_without_a_body_is_served_then_closed(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    known_uvicorn_gap(protocol, request, "uvicorn does not say connection: close")
    async with served(echo, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/plain", "connection: upgrade", "upgrade: h2c")
        assert await client.closed_by_server(2)
    assert response.body == b"GET /plain"
    assert response.head.closes


async def test_an_http_1_0_client_kept_alive_is_told_so(protocol: Protocol) -> None:
    """A 1.0 connection is closed after each answer unless both sides say keep-alive."""
    request_ = b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(request_)
        first = await client.read_response()
        if first.head.closes or first.head.get("connection") is None:
            assert await client.closed_by_server(2), "kept open without saying so"
            return
        assert first.head.get("connection") == "keep-alive"
        await client.send(request_.replace(b"/a", b"/b"))
        second = await client.read_response()
    assert (first.body, second.body) == (b"GET /a", b"GET /b")


async def test_two_receives_at_once_are_both_told_of_a_disconnect(protocol: Protocol) -> None:
    told: list[str] = []
    both_waiting = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)

        async def wait(name: str) -> None:
            told.append(f"{name}:{(await receive())['type']}")

        waits = [asyncio.create_task(wait(name)) for name in ("a", "b")]
        await asyncio.sleep(0.05)
        both_waiting.set()
        await asyncio.wait(waits, timeout=WAIT_S)

    async with served(app, protocol) as server:
        async with connected(server.port) as client:
            await client.send(request_bytes("GET", "/"))
            await asyncio.wait_for(both_waiting.wait(), WAIT_S)
        await eventually(lambda: len(told) == 2, WAIT_S, "both receives to end")
    assert sorted(told) == ["a:http.disconnect", "b:http.disconnect"]


async def test_an_app_failing_before_a_sized_body_still_gives_a_500(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """A sized answer's head waits for its body (one write): if the app fails between
    the two, nothing has gone out yet, and the client gets a 500, not a closed socket."""
    known_uvicorn_gap(protocol, request, "uvicorn has written the head already")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start(200, 10))
        raise RuntimeError("boom")

    async with served(app, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/")
    assert response.status == 500


async def test_a_request_head_sent_too_slowly_is_cut_off(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """A client that sends a header line now and then may not hold a connection."""
    known_uvicorn_gap(protocol, request, "uvicorn waits for a head forever")
    async with (
        served(echo, protocol, timeout_keep_alive=1) as server,
        connected(server.port) as client,
    ):
        await client.send(b"GET / HTTP/1.1\r\n")
        began = time.monotonic()
        try:
            for index in range(12):  # 3 s of a slow head
                await asyncio.sleep(0.25)
                await client.send(b"x-slow-%d: 1\r\n" % index)
            closed = await client.closed_by_server(2)
        except ConnectionError:  # writing to the closed connection
            closed = True
        assert closed, "the slow head held the connection"
    assert time.monotonic() - began < 2.5


async def test_content_length_with_transfer_encoding_is_refused_or_closed_after(
    protocol: Protocol,
) -> None:
    """RFC 9112 section 6.3: reject it, or read it by Transfer-Encoding alone; either
    way close the connection after, so no smuggled bytes are read as a request."""
    async with served(echo, protocol) as server, connected(server.port) as client:
        await client.send(
            request_bytes(
                "POST",
                "/",
                "content-length: 3",
                "transfer-encoding: chunked",
                body=b"3\r\nabc\r\n0\r\n\r\n",
            )
        )
        response = await client.read_response()
        assert await client.closed_by_server(2), "the connection was left open"
    assert 400 <= response.status < 500 or response.body == b"abc"


# -- timeouts, failures of the app ---------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    protocol: Protocol,
) -> None:
    async with served(echo, protocol, timeout_keep_alive=1) as server:
        async with connected(server.port) as client:
            await client.request("GET", "/")
            answered_at = time.monotonic()
            assert await client.closed_by_server(3), "the idle connection was kept"
        idle_s = time.monotonic() - answered_at
        assert 0.7 < idle_s < 2.5, idle_s


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_timeout(
    protocol: Protocol, request: pytest.FixtureRequest
) -> None:
    """Else every silent connection holds a socket and its memory for good."""
    known_uvicorn_gap(protocol, request, "uvicorn arms the timeout only after an answer")
    async with (
        served(echo, protocol, timeout_keep_alive=1) as server,
        connected(server.port) as client,
    ):
        assert await client.closed_by_server(3), "the silent connection was kept"


async def test_an_app_that_raises_before_answering_gives_a_500(protocol: Protocol) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async with served(app, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/")
        if response.head.closes:
            assert await client.closed_by_server(2)
        else:
            assert (await client.request("GET", "/")).status == 500
    assert response.status == 500


async def test_an_app_that_raises_mid_body_leaves_the_body_unterminated(
    protocol: Protocol,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start())
        await send(part(b"partial", more=True))
        raise RuntimeError("boom")

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(request_bytes("GET", "/"))
        head = await client.read_head()
        with pytest.raises(CutShort) as cut:
            await client.read_body(head)
    assert head.status == 200 and head.chunked
    assert cut.value.received == b"partial"


async def test_an_app_that_returns_without_answering_gives_a_500(protocol: Protocol) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    async with served(app, protocol) as server, connected(server.port) as client:
        response = await client.request("GET", "/")
    assert response.status == 500


# -- graceful shutdown ------------------------------------------------------------------


async def test_shutdown_finishes_the_request_in_flight_and_closes_the_rest(
    protocol: Protocol,
) -> None:
    halfway = asyncio.Event()
    may_finish = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/slow":
            await echo(scope, receive, send)
            return
        await send(start())
        await send(part(b"first half, ", more=True))
        halfway.set()
        await may_finish.wait()
        await send(part(b"second half"))

    async with served(app, protocol) as server:
        idle = await Connection.open(server.port)
        busy = await Connection.open(server.port)
        try:
            assert (await idle.request("GET", "/")).status == 200
            await busy.send(request_bytes("GET", "/slow"))
            head = await busy.read_head()
            await asyncio.wait_for(halfway.wait(), WAIT_S)

            server.server.should_exit = True
            assert await idle.closed_by_server(2), "the idle connection was kept open"
            with pytest.raises(ConnectionRefusedError):
                await Connection.open(server.port)
            may_finish.set()
            body, _ = await busy.read_body(head)
            assert body == b"first half, second half"
            assert await busy.closed_by_server(2)
        finally:
            await idle.close()
            await busy.close()


# -- what reaches the app, what reaches the wire -----------------------------------------


async def test_the_scope_carries_the_request_as_sent(protocol: Protocol) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await echo(scope, receive, send)

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.request(
            "PUT",
            "/a%20b/c%2Fd?x=1&y=%20z",
            "X-Mixed-Case: Value With  Inner Spaces",
            "X-Repeated: one",
            "x-other: between",
            "X-REPEATED: two",
            body=b"{}",
        )
        local = client.local_address
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["method"] == "PUT"
    assert scope["path"] == "/a b/c/d"
    assert scope["raw_path"] == b"/a%20b/c%2Fd"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == ""
    assert tuple(scope["client"]) == local
    assert tuple(scope["server"]) == ("127.0.0.1", server.port)
    assert [(bytes(n), bytes(v)) for n, v in scope["headers"]] == [
        (b"host", b"test"),
        (b"x-mixed-case", b"Value With  Inner Spaces"),
        (b"x-repeated", b"one"),
        (b"x-other", b"between"),
        (b"x-repeated", b"two"),
        (b"content-length", b"2"),
    ]


async def test_an_http_1_0_scope_says_so(protocol: Protocol) -> None:
    versions: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        versions.append(scope["http_version"])
        await echo(scope, receive, send)

    async with served(app, protocol) as server, connected(server.port) as client:
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        await client.read_response()
    assert versions == ["1.0"]


@pytest.mark.parametrize(
    "header",
    [
        (b"x-ok", b"fine\r\nx-injected: yes"),
        (b"x-ok", b"fine\nx-injected: yes"),
        (b"x-ok\r\nx-injected", b"yes"),
    ],
    ids=["crlf-in-value", "lf-in-value", "crlf-in-name"],
)
async def test_a_header_cannot_inject_another(
    protocol: Protocol, header: tuple[bytes, bytes]
) -> None:
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.wait_for(send(start(200, 2, header)), 1)
            await asyncio.wait_for(send(part(b"ok")), 1)
            outcome.append("sent")
        except TimeoutError:
            outcome.append("hung")
        except Exception:
            outcome.append("refused")
            raise

    async with served(app, protocol) as server, connected(server.port) as client:
        # Whether the server answers or gives up, the connection then ends.
        await client.send(request_bytes("GET", "/", "connection: close"))
        received = await client.read_until_closed()
        await eventually(lambda: bool(outcome), WAIT_S, "the app to finish")
    head = received.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"x-injected") for line in head.split(b"\n"))
    assert outcome != ["hung"]
