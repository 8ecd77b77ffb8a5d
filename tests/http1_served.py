"""An ASGI app served by uvicorn with a chosen HTTP/1.1 protocol class, and a client
that speaks raw bytes to it.

The client checks the framing a strict HTTP/1.1 client relies on (hex chunk sizes,
CRLFs, the terminating chunk, Content-Length) rather than forgiving it, so that a
server that gets the wire format wrong fails the test instead of being parsed around.
Every read is bounded by ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import uvicorn

from net import eventually
from slm_server.router.asgi import Receive, Scope, Send

App = Callable[[Scope, Receive, Send], Awaitable[None]]

WAIT_S = 5.0

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)\r\n")


@dataclass
class Served:
    port: int
    server: uvicorn.Server


@asynccontextmanager
async def served(
    app: App,
    protocol: type[asyncio.Protocol],
    *,
    timeout_keep_alive: int = 5,
    timeout_graceful_shutdown: int = 3,
) -> AsyncIterator[Served]:
    """``app`` under uvicorn speaking HTTP/1.1 through ``protocol`` on a free loopback
    port; stopped (gracefully, then bounded) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        timeout_keep_alive=timeout_keep_alive,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), WAIT_S, "uvicorn to start")
        assert not task.done(), "uvicorn stopped at start-up"
        yield Served(port, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout_graceful_shutdown + WAIT_S)
        sock.close()


class Malformed(AssertionError):
    """The server sent bytes a strict HTTP/1.1 client cannot parse."""


class CutShort(Exception):
    """The connection closed before the body's end (its framing said there was more)."""

    def __init__(self, received: bytes) -> None:
        super().__init__(f"connection closed after {len(received)} body bytes")
        self.received = received


@dataclass
class Head:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, values as sent, in order
    raw: bytes

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    @property
    def chunked(self) -> bool:
        return (self.get("transfer-encoding") or "").lower() == "chunked"

    @property
    def closes(self) -> bool:
        return "close" in (self.get("connection") or "").lower()


@dataclass
class Response:
    head: Head
    body: bytes
    raw_body: bytes = field(repr=False)

    @property
    def status(self) -> int:
        return self.head.status


class Connection:
    """One client connection; reads are bounded and framing is checked strictly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> Connection:
        """``receive_buffer``: a fixed kernel receive buffer (off: the kernel's, which
        loopback grows to tens of MiB), for a client that stops reading."""
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT_S
            )
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT_S)

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):  # the server reset it first: closed either way
            await asyncio.wait_for(self.writer.wait_closed(), WAIT_S)

    async def _read(self, what: Awaitable[bytes]) -> bytes:
        return await asyncio.wait_for(what, WAIT_S)

    async def read_head(self) -> Head:
        """The next response head (an interim 1xx included)."""
        raw = await self._read(self.reader.readuntil(b"\r\n\r\n"))
        status_line = _STATUS_LINE.match(raw)
        if status_line is None:
            raise Malformed(f"not a status line: {raw[:80]!r}")
        headers: list[tuple[str, str]] = []
        for line in raw[status_line.end() : -2].split(b"\r\n")[:-1]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise Malformed(f"not a header line: {line!r}")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return Head(int(status_line.group(1)), headers, raw)

    async def read_chunk(self) -> tuple[bytes, bytes]:
        """The next chunk of a chunked body and its bytes on the wire; ``b""`` data
        for the terminating chunk (whose empty trailer is read too)."""
        size_line = await self._read(self.reader.readuntil(b"\r\n"))
        size = _CHUNK_SIZE.fullmatch(size_line)
        if size is None:
            raise Malformed(f"not a chunk size line: {size_line[:80]!r}")
        length = int(size.group(1), 16)
        data = await self._read(self.reader.readexactly(length + 2))
        if not data.endswith(b"\r\n"):
            raise Malformed(f"chunk of {length} bytes not followed by CRLF")
        return data[:-2], size_line + data

    async def read_body(self, head: Head, *, method: str = "GET") -> tuple[bytes, bytes]:
        """The body ``head`` announces and its bytes on the wire; CutShort when the
        connection ends before the framing does."""
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return b"", b""
        if head.chunked:
            return await self._read_chunked()
        length = head.get("content-length")
        try:
            if length is not None:
                body = await self._read(self.reader.readexactly(int(length)))
            else:
                body = await self._read(self.reader.read())  # delimited by the close
        except asyncio.IncompleteReadError as cut:
            raise CutShort(cut.partial) from None
        return body, body

    async def _read_chunked(self) -> tuple[bytes, bytes]:
        data: list[bytes] = []
        wire: list[bytes] = []
        try:
            while True:
                chunk, raw = await self.read_chunk()
                wire.append(raw)
                if not chunk:
                    return b"".join(data), b"".join(wire)
                data.append(chunk)
        except asyncio.IncompleteReadError as cut:
            raise CutShort(b"".join(data) + cut.partial) from None

    async def read_response(self, *, method: str = "GET") -> Response:
        head = await self.read_head()
        body, raw_body = await self.read_body(head, method=method)
        return Response(head, body, raw_body)

    async def request(self, method: str, target: str, *headers: str, body: bytes = b"") -> Response:
        """One HTTP/1.1 request written and its answer read."""
        await self.send(request_bytes(method, target, *headers, body=body))
        return await self.read_response(method=method)

    async def closed_by_server(self, within_s: float = WAIT_S) -> bool:
        """Whether the server closes the connection within ``within_s`` with nothing
        more sent (bytes that arrive instead fail the test)."""
        try:
            extra = await asyncio.wait_for(self.reader.read(), within_s)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert extra == b"", f"unexpected bytes before the close: {extra[:80]!r}"
        return True

    async def sends_nothing_for(self, seconds: float) -> bool:
        """Whether no byte (and no close) arrives within ``seconds``."""
        try:
            early = await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return True
        assert not early, f"the server sent {early!r} early"
        return False

    async def read_until_closed(self, limit: int = 1 << 20) -> bytes:
        """Everything the server sends until it closes the connection."""
        received = bytearray()
        while len(received) <= limit:
            try:
                data = await self._read(self.reader.read(65536))
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        return bytes(received)


def request_bytes(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    """A request's bytes; a Content-Length added for a body unless ``headers`` frame it."""
    lines = [f"{method} {target} HTTP/1.1", "host: test", *headers]
    framed = any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers)
    if body and not framed:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@asynccontextmanager
async def connected(port: int, *, receive_buffer: int | None = None) -> AsyncIterator[Connection]:
    connection = await Connection.open(port, receive_buffer=receive_buffer)
    try:
        yield connection
    finally:
        await connection.close()
