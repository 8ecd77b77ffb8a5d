"""The backend HTTP client against scripted servers: framing, keep-alive, failures, streaming.

Each server here is a plain asyncio TCP server whose handler writes exactly the bytes a test
needs, so edge cases (a body cut short, a connection closed while idle, a reply that is not
HTTP) are produced on purpose rather than hoped for. Every test runs on asyncio's loop and
on uvloop (see this directory's conftest).
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from slm_server.upstream import (
    MAX_HEADER_BYTES,
    BodyStalled,
    ConnectFailed,
    ConnectionBroken,
    ResponseTooLarge,
    UpstreamPool,
    UpstreamResponse,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Server:
    """Counts connections and requests; ``handler`` answers each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(make_handler: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = make_handler(server)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answering(*replies: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """Read a request, write the next reply, for each reply; keep the connection open."""

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for reply in replies:
                await server.read_request(reader)
                writer.write(reply)
                await writer.drain()
            if not then_close:
                await reader.read()  # until the client closes

        return handle

    return make


async def test_a_post_arrives_whole_and_the_answer_is_read() -> None:
    async with serving(answering(OK)) as server:
        pool = UpstreamPool(keepalive_s=4)
        headers = [(b"content-type", b"application/json"), (b"x-extra", b"1")]
        response = await pool.request(
            "POST", "127.0.0.1", server.port, "/v1/x", headers, b'{"a":1}'
        )
        assert (response.status, response.content_type) == (200, "application/json")
        assert await response.read() == b"{}"
        response.release()
        pool.close()
    request = server.requests[0]
    assert request.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"x-extra: 1\r\n" in request and b"content-length: 7\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a":1}')


async def test_a_released_connection_is_reused() -> None:
    async with serving(answering(OK, OK, OK)) as server:
        pool = UpstreamPool(keepalive_s=4)
        for _ in range(3):
            status, body = await pool.get("127.0.0.1", server.port, "/health")
            assert (status, body) == (200, b"{}")
        pool.close()
    assert server.connections == 1


async def test_an_idle_connection_past_keepalive_is_not_reused() -> None:
    async with serving(answering(OK)) as server:
        pool = UpstreamPool(keepalive_s=0.05)
        await pool.get("127.0.0.1", server.port, "/health")
        await asyncio.sleep(0.1)
        await pool.get("127.0.0.1", server.port, "/health")
        pool.close()
    assert server.connections == 2


async def test_a_connection_the_backend_closed_while_idle_is_not_reused() -> None:
    async with serving(answering(OK, then_close=True)) as server:
        pool = UpstreamPool(keepalive_s=4)
        await pool.get("127.0.0.1", server.port, "/a")
        await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
        assert await pool.get("127.0.0.1", server.port, "/b") == (200, b"{}")
        pool.close()
    assert server.connections == 2


async def test_a_request_crossing_the_backends_idle_close_is_sent_again() -> None:
    """The backend closes an idle connection just as a request goes out on it, unanswered."""

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            if server.connections == 1:
                await reader.read(1)  # the next request has started to arrive: close on it

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        await pool.get("127.0.0.1", server.port, "/a")
        assert await pool.get("127.0.0.1", server.port, "/b") == (200, b"{}")
        pool.close()
    assert server.connections == 2
    assert [r.split(b" ")[1] for r in server.requests] == [b"/a", b"/b"]


async def test_refused() -> None:
    async with serving(answering()) as server:
        port = server.port
    with pytest.raises(ConnectFailed) as caught:
        await UpstreamPool(keepalive_s=4).get("127.0.0.1", port, "/health")
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


async def test_a_body_cut_short_is_an_error_not_a_short_answer() -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10
    async with serving(answering(cut, then_close=True)) as server:
        response = await UpstreamPool(keepalive_s=4).request("GET", "127.0.0.1", server.port, "/")
        with pytest.raises(ConnectionBroken, match="mid-answer"):
            await response.read()
        response.close()


async def test_an_answer_that_is_not_http() -> None:
    async with serving(answering(b"SSH-2.0-OpenSSH\r\n\r\n")) as server:
        with pytest.raises(ConnectionBroken, match="not valid HTTP"):
            await UpstreamPool(keepalive_s=4).get("127.0.0.1", server.port, "/")


async def test_a_body_ended_by_closing_the_connection() -> None:
    """HTTP/1.0-style servers (Python's http.server among them) send no length."""
    old_style = b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\ndata: 2\n\n"
    async with serving(answering(old_style, then_close=True)) as server:
        status, body = await UpstreamPool(keepalive_s=4).get("127.0.0.1", server.port, "/")
    assert (status, body) == (200, b"data: 1\n\ndata: 2\n\n")


async def test_chunks_are_handed_over_as_they_arrive() -> None:
    second_chunk_allowed = asyncio.Event()

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"9\r\ndata: 1\n\n\r\n")
            await writer.drain()
            await second_chunk_allowed.wait()
            writer.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        assert await response.read_piece() == b"data: 1\n\n"  # before the second is even sent
        second_chunk_allowed.set()
        assert await response.read_piece() == b"data: 2\n\n"
        assert await response.read_piece() == b""
        response.release()
        pool.close()


def paced_stream(gaps_s: list[float]) -> Callable[[Server], Handler]:
    """A chunked SSE answer: one event after each gap in ``gaps_s``, then its end."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(head)
            for index, gap in enumerate(gaps_s):
                await asyncio.sleep(gap)
                event = b"data: %d\n\n" % index
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return handle

    return make


async def read_all(response: UpstreamResponse, idle_s: float) -> bytes:
    """The body as a stream's relay reads it: whatever has arrived, waiting for more."""
    take_piece, arrival = response.pieces(idle_s)
    pieces = []
    while (piece := take_piece()) != b"":
        if piece is None:
            await arrival()
        else:
            pieces.append(piece)
    return b"".join(pieces)


async def test_a_wait_for_the_body_past_its_idle_bound_fails() -> None:
    async with serving(paced_stream([0, 0.05, 0.6])) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        began = asyncio.get_running_loop().time()
        with pytest.raises(BodyStalled) as stalled:
            await read_all(response, 0.2)
        waited = asyncio.get_running_loop().time() - began
        # The third event is 0.6 s late: the wait for it, begun at about 0.05 s, fails
        # 0.2 s after it began (not 0.2 s after the body's start).
        assert 0.24 <= waited < 0.5
        assert stalled.value.idle_s == 0.2
        response.close()
        pool.close()


async def test_steady_events_closer_than_the_bound_never_stall() -> None:
    # Each wait (0.15 s) is under the bound (0.2 s), the whole body (0.75 s) far over it,
    # and the reader always waits: only a bound per wait lets this stream through.
    async with serving(paced_stream([0.15] * 5)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        body = await read_all(response, 0.2)
        assert body.count(b"data:") == 5
        response.release()
        pool.close()


async def test_the_idle_bound_is_per_wait_not_for_the_whole_body() -> None:
    """Events 0.1 s apart for longer than the bound in all: each wait is short, none fails;
    nor does time the reader spends elsewhere between its reads."""
    async with serving(paced_stream([0.1] * 6)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        take_piece, arrival = response.pieces(0.25)
        body = b""
        while (piece := take_piece()) != b"":
            if piece is None:
                await arrival()
                continue
            body += piece
            await asyncio.sleep(0.3)  # a slow client: the send, not the backend, waits
        assert body == b"".join(b"data: %d\n\n" % index for index in range(6))
        response.release()
        pool.close()


async def relay_to_sink(
    response: UpstreamResponse, idle_s: float, wants_more: Callable[[bytes], bool]
) -> tuple[list[bytes], list[bytes], int]:
    """The body as the router's stream relay reads it: handed to a sink during each wait,
    taken in the loop after the sink wanted no more. The sink's pieces, the loop's, and
    how many times the reader was woken."""
    take_piece, arrival = response.pieces(idle_s)
    sunk: list[bytes] = []
    taken: list[bytes] = []
    wakes = 0

    def sink(piece: bytes) -> bool:
        sunk.append(piece)
        return wants_more(piece)

    while (piece := take_piece()) != b"":
        if piece is None:
            await arrival(sink)
            wakes += 1
        else:
            taken.append(piece)
    return sunk, taken, wakes


EVENTS = [b"data: %d\n\n" % index for index in range(6)]


async def test_a_sink_takes_each_piece_as_it_arrives_and_the_reader_wakes_once() -> None:
    async with serving(paced_stream([0.02] * 6)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        sunk, taken, wakes = await relay_to_sink(response, 1.0, lambda piece: True)
        assert b"".join(sunk) == b"".join(EVENTS)
        assert len(sunk) == 6  # one at a time, as they came 20 ms apart
        assert taken == []
        assert wakes == 1  # at the body's end only
        response.release()
        pool.close()


async def test_a_sink_that_wants_no_more_leaves_the_rest_to_the_reader_in_order() -> None:
    """As when the client falls behind: the sink takes event 1 and wants no more, the
    reader wakes and waits for the client (0.1 s); what arrives meanwhile is kept."""
    async with serving(paced_stream([0.02] * 6)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        take_piece, arrival = response.pieces(1.0)
        sunk: list[bytes] = []
        taken: list[bytes] = []

        def sink(piece: bytes) -> bool:
            sunk.append(piece)
            return b"1" not in piece

        while (piece := take_piece()) != b"":
            if piece is None:
                await arrival(sink)
                if sunk[-1] == EVENTS[1]:
                    await asyncio.sleep(0.1)
            else:
                taken.append(piece)
        assert sunk[:2] == EVENTS[:2]
        assert taken and taken[0].startswith(EVENTS[2])  # kept, then read by the reader
        assert b"".join(sunk[:2] + taken + sunk[2:]) == b"".join(EVENTS)
        response.release()
        pool.close()


async def test_a_steady_stream_into_a_sink_never_stalls() -> None:
    # One wait lasts the whole body (0.75 s, far over the 0.2 s bound): only the pieces
    # the sink takes meanwhile may count as arrivals.
    async with serving(paced_stream([0.15] * 5)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        sunk, _, wakes = await relay_to_sink(response, 0.2, lambda piece: True)
        assert b"".join(sunk).count(b"data:") == 5
        assert wakes == 1
        response.release()
        pool.close()


async def test_a_stream_into_a_sink_that_stops_stalls() -> None:
    async with serving(paced_stream([0, 0.05, 0.6])) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        began = asyncio.get_running_loop().time()
        with pytest.raises(BodyStalled):
            await relay_to_sink(response, 0.2, lambda piece: True)
        waited = asyncio.get_running_loop().time() - began
        assert 0.24 <= waited < 0.5  # 0.2 s after the second event, not after the first
        response.close()
        pool.close()


async def test_a_released_connection_keeps_no_idle_bound() -> None:
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await server.read_request(reader)
            writer.write(OK[:-2])
            await asyncio.sleep(0.2)  # a body later than the first answer's bound
            writer.write(OK[-2:])
            await reader.read()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        first = await pool.request("POST", "127.0.0.1", server.port, "/")
        assert await read_all(first, 0.05) == b"{}"
        first.release()
        second = await pool.request("POST", "127.0.0.1", server.port, "/")
        assert await second.read() == b"{}"
        second.release()
        assert server.connections == 1
        pool.close()


async def test_cancelling_a_wait_drops_the_connection() -> None:
    """A client that leaves (or a timeout) must reach the backend as a closed connection."""
    backend_saw_close = asyncio.Event()

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await reader.read()  # never answers; returns when the client closes
            backend_saw_close.set()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        await asyncio.wait_for(backend_saw_close.wait(), 2)
        pool.close()


async def test_a_connection_dropped_mid_answer_is_freed_without_the_cycle_collector() -> None:
    """Reference counting alone must free a connection a client walked away from.

    The router runs the cyclic collector rarely (router/app.py, settle_garbage_collector):
    a connection kept alive by a reference cycle (its parser and its transport both point
    back at it) held its buffers until the next collection; a soak of abandoned streams
    grew the router's memory by about 350 bytes a stream until the collector caught up.
    """
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(head + b"6\r\ndata: \r\n")
            await writer.drain()
            await reader.read()  # the rest never comes; returns when the client closes

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/chat/completions")
        assert await response.read_piece() == b"data: "
        freed = asyncio.Event()
        connection = weakref.ref(response._connection, lambda _: freed.set())
        gc.disable()
        try:
            response.close()  # as the router does when its client disconnects
            del response
            # connection_lost comes a loop turn or two later; then nothing may hold it.
            async with asyncio.timeout(2):
                await freed.wait()
        except TimeoutError:
            raise AssertionError(f"still held by {gc.get_referrers(connection())}") from None
        finally:
            gc.enable()
        pool.close()


async def test_a_slow_reader_pauses_a_fast_backend() -> None:
    """A client reading slowly must not make the router buffer the whole answer."""
    size = 64 * 1024 * 1024  # far beyond what the kernel buffers on loopback (a few MB)
    sent = 0

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            block = b"x" * 65536
            while sent < size:
                writer.write(block)
                await writer.drain()
                sent += len(block)

        return handle

    async with serving(make) as server:
        response = await UpstreamPool(keepalive_s=4).request("GET", "127.0.0.1", server.port, "/")
        first = await response.read_piece()
        await asyncio.sleep(0.3)  # the backend writes as fast as it can meanwhile
        assert sent < size / 4  # held back by the paused connection
        received = len(first) + len(await response.read())
        assert received == size
        response.release()


async def test_an_interim_answer_is_skipped_and_the_pool_stays_in_step() -> None:
    """A 100 Continue is not the answer: taking it for one would shift every later answer."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    first = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"
    second = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(interim)
            await writer.drain()
            await asyncio.sleep(0.05)  # the interim answer arrives on its own
            writer.write(first)
            await server.read_request(reader)
            writer.write(second)
            await reader.read()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        assert await pool.get("127.0.0.1", server.port, "/a") == (200, b"first")
        assert await pool.get("127.0.0.1", server.port, "/b") == (200, b"second")
        pool.close()
    assert server.connections == 1


async def test_an_answer_left_unread_is_not_reused() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1_000_000

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await server.read_request(reader)
                writer.write(big if request.startswith(b"GET /big ") else OK)
                await writer.drain()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("GET", "127.0.0.1", server.port, "/big")
        await response.read_piece()
        response.release()  # the rest is unread: the connection cannot carry another answer
        assert await pool.get("127.0.0.1", server.port, "/a") == (200, b"{}")
        pool.close()
    assert server.connections == 2


async def test_a_closed_pool_keeps_nothing() -> None:
    async with serving(answering(OK)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("GET", "127.0.0.1", server.port, "/")
        pool.close()  # shutting down while an answer is still being read
        assert await response.read() == b"{}"
        response.release()
        assert pool.idle_connections() == 0


async def test_idle_connections_to_addresses_left_are_closed_the_others_kept() -> None:
    async with serving(answering(OK)) as left, serving(answering(OK, OK)) as kept:
        pool = UpstreamPool(keepalive_s=4)
        async with asyncio.timeout(5):
            for server in (left, kept):
                assert await pool.get("127.0.0.1", server.port, "/") == (200, b"{}")
            pool.close_idle_except({("127.0.0.1", kept.port, None)})
            assert pool.idle_connections() == 1
            assert await pool.get("127.0.0.1", kept.port, "/") == (200, b"{}")  # reused
        pool.close()
    assert (left.connections, kept.connections) == (1, 1)


def answering_head(head: bytes) -> Callable[[Server], Handler]:
    """Read a request, then write ``head`` (which need not end) and wait for the close."""

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(head)
            await writer.drain()
            await reader.read()

        return handle

    return make


async def test_headers_over_the_limit_end_the_exchange() -> None:
    many = b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 1000) for n in range(100))
    head = b"HTTP/1.1 200 OK\r\n" + many + b"content-length: 2\r\n\r\n{}"
    async with serving(answering_head(head)) as server:
        pool = UpstreamPool(keepalive_s=4)
        with pytest.raises(ResponseTooLarge, match="headers"):
            async with asyncio.timeout(5):
                await pool.request("POST", "127.0.0.1", server.port, "/v1/x")
        assert pool.idle_connections() == 0
        pool.close()


async def test_a_header_that_never_ends_is_cut_off_at_the_limit() -> None:
    # No blank line ever comes: waiting for it would hold the bytes until a timeout.
    head = b"HTTP/1.1 200 OK\r\nx-endless: " + b"v" * (MAX_HEADER_BYTES * 4)
    async with serving(answering_head(head)) as server:
        pool = UpstreamPool(keepalive_s=4)
        with pytest.raises(ResponseTooLarge, match=str(MAX_HEADER_BYTES)):
            async with asyncio.timeout(5):
                await pool.request("POST", "127.0.0.1", server.port, "/v1/x")
        pool.close()


async def test_headers_just_under_the_limit_are_accepted() -> None:
    filler = b"x-filler: " + b"v" * (MAX_HEADER_BYTES - 200) + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + filler + b"content-length: 2\r\n\r\n{}"
    async with serving(answering_head(head)) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/x")
        assert await response.read() == b"{}"
        response.release()
        pool.close()


async def test_a_head_arriving_in_pieces_is_counted_once() -> None:
    filler = b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 1000) for n in range(40))  # 40 KB
    head = b"HTTP/1.1 200 OK\r\n" + filler + b"content-length: 2\r\n\r\n{}"

    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            for start in range(0, len(head), 7000):
                writer.write(head[start : start + 7000])
                await writer.drain()
                await asyncio.sleep(0.005)  # separate reads on the client's side
            await reader.read()

        return handle

    async with serving(make) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/x")
        assert await response.read() == b"{}"
        response.release()
        pool.close()


async def test_a_body_read_whole_is_cut_off_at_its_limit() -> None:
    # A backend that answers without end: chunked, never a last chunk.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 4096
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    async with serving(lambda server: endless) as server:
        pool = UpstreamPool(keepalive_s=4)
        response = await pool.request("POST", "127.0.0.1", server.port, "/v1/x")
        with pytest.raises(ResponseTooLarge, match="100000 bytes"):
            async with asyncio.timeout(5):
                await response.read(limit=100_000)
        response.close()
        assert pool.idle_connections() == 0
        pool.close()
