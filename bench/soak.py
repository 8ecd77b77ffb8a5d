"""The soak run: many mixed requests through the router, watching its memory and descriptors.

A leak shows as growth that keeps going, so the router's RSS is read once the
first tenth of the requests is done (allocator pools and caches warmed) and
again at the end; the two must stay within 10%. Its open file descriptors are
counted before and after, once every client connection is closed: every
socket, pipe and file must be back to where it was, except idle keep-alive
connections to the backend that the router's pool keeps for reuse (at most
one per request it ran at once; it closes them once past its keep-alive
limit).

The mix, in a fixed cycle so that every kind runs all through the soak:
plain and streamed chat (relayed), /v1/responses and /v1/messages plain and
streamed (the fake backend has neither, so the router converts them to chat),
a model outside the key's scope (403), a body that is not JSON (400), and streams the client
walks away from after their first bytes. Every answer is checked: a status
or a body other than the expected one counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import psutil
import uvloop

from bench.router import AUTH_HEADERS, MODEL_ID

_JSON = {"content-type": "application/json", **AUTH_HEADERS}
_STREAM_CHUNKS = 8  # short streams: the soak counts requests, not chunks
_REQUEST_TIMEOUT_S = 60
_FD_SETTLE_S = 10  # time the router gets to close sockets its clients closed


def _body(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode()


_MESSAGES = [{"role": "user", "content": "Hello"}]
_CHAT = _body({"model": MODEL_ID, "messages": _MESSAGES, "max_tokens": 16})
_CHAT_STREAM = _body(
    {"model": MODEL_ID, "messages": _MESSAGES, "stream": True, "bench_chunks": _STREAM_CHUNKS}
)
# store false: a stored response is kept on purpose (a bounded cache), and would show as
# growth that is no leak.
_RESPONSES = _body({"model": MODEL_ID, "input": "Hello", "store": False})
_RESPONSES_STREAM = _body({"model": MODEL_ID, "input": "Hello", "store": False, "stream": True})
_MESSAGES_BODY = _body({"model": MODEL_ID, "max_tokens": 16, "messages": _MESSAGES})
_MESSAGES_STREAM = _body(
    {"model": MODEL_ID, "max_tokens": 16, "messages": _MESSAGES, "stream": True}
)
_UNKNOWN_MODEL = _body({"model": "no-such-model", "messages": _MESSAGES})
_NOT_JSON = b'{"model": "bench", "messages": [{'
# Long and slow enough that the client is gone well before the backend is done.
_ABANDONED = _body(
    {
        "model": MODEL_ID,
        "messages": _MESSAGES,
        "stream": True,
        "bench_chunks": 64,
        "bench_gap_ms": 2,
    }
)


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, and what a correct answer to it looks like."""

    name: str
    path: str
    body: bytes
    status: int
    # Bytes a correct body contains (checked on the whole body); None: status only.
    marker: bytes | None = None
    abandon: bool = False  # read the first bytes, then drop the connection


_KINDS = {
    kind.name: kind
    for kind in (
        Kind("chat", "/v1/chat/completions", _CHAT, 200, b'"chat.completion"'),
        Kind("chat stream", "/v1/chat/completions", _CHAT_STREAM, 200, b"data: [DONE]"),
        Kind("responses", "/v1/responses", _RESPONSES, 200, b"completed"),
        Kind("responses stream", "/v1/responses", _RESPONSES_STREAM, 200, b"response.completed"),
        Kind("messages", "/v1/messages", _MESSAGES_BODY, 200, b"end_turn"),
        Kind("messages stream", "/v1/messages", _MESSAGES_STREAM, 200, b"message_stop"),
        Kind("model outside the key", "/v1/chat/completions", _UNKNOWN_MODEL, 403, b'"error"'),
        Kind("not json", "/v1/chat/completions", _NOT_JSON, 400, b'"error"'),
        Kind("abandoned stream", "/v1/chat/completions", _ABANDONED, 200, abandon=True),
    )
}
# 20 requests a cycle: relayed chat the most common, as in real use.
CYCLE = [
    *["chat"] * 5,
    *["chat stream"] * 3,
    *["responses", "responses stream", "messages", "messages stream"] * 2,
    "model outside the key",
    "not json",
    *["abandoned stream"] * 2,
]


@dataclass(frozen=True)
class Descriptors:
    """The router's open file descriptors, split by what they are for."""

    total: int
    pooled: int  # sockets to the backend: the upstream pool's keep-alive connections

    @property
    def own(self) -> int:
        """Everything but the pool: must be the same after the soak as before."""
        return self.total - self.pooled


def descriptors(pid: int, backend_port: int) -> Descriptors:
    process = psutil.Process(pid)
    total = process.num_fds()
    pooled = sum(
        1
        for connection in process.net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == backend_port
    )
    return Descriptors(total, pooled)


@dataclass
class SoakRun:
    requests: int = 0  # answered (or abandoned as planned)
    planned: int = 0
    connections: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    first_error: str = ""
    elapsed_s: float = 0.0
    timed_out: bool = False
    mark: int = 0  # requests done when rss_mark_mb was read
    rss_mark_mb: float = float("nan")
    rss_end_mb: float = float("nan")
    fds_before: Descriptors | None = None
    fds_after: Descriptors | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def rss_growth(self) -> float:
        """End RSS against the mark's, as a fraction (0.05: 5% more)."""
        return self.rss_end_mb / self.rss_mark_mb - 1

    @property
    def complete(self) -> bool:
        return not self.timed_out and self.requests == self.planned

    def fail(self, kind: str, why: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if not self.first_error:
            self.first_error = f"{kind}: {why}"


async def _one(session: aiohttp.ClientSession, base_url: str, kind: Kind, run: SoakRun) -> None:
    async with session.post(base_url + kind.path, data=kind.body, headers=_JSON) as response:
        if kind.abandon:
            first = await response.content.readany() if response.status == 200 else b""
            # close(), not release(): the connection is dropped mid-stream, as a client
            # that gives up does; the router must free what the stream held.
            response.close()
            if response.status != kind.status or not first:
                run.fail(kind.name, f"status {response.status}, first bytes {first[:80]!r}")
            return
        body = await response.read()
    if response.status != kind.status or (kind.marker is not None and kind.marker not in body):
        run.fail(kind.name, f"status {response.status}: {body[:200]!r}")


async def _soak(
    base_url: str,
    requests: int,
    connections: int,
    deadline_s: float,
    router_rss_mb: Callable[[], float],
) -> SoakRun:
    run = SoakRun(planned=requests, connections=connections, mark=max(requests // 10, 1))
    kinds = [_KINDS[name] for name in CYCLE]
    issued = 0
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S),
        auto_decompress=False,
    )
    begin = time.perf_counter()
    stop_at = begin + deadline_s

    async def worker() -> None:
        nonlocal issued
        while issued < requests:
            if time.perf_counter() > stop_at:
                run.timed_out = True
                return
            kind = kinds[issued % len(kinds)]
            issued += 1
            try:
                await _one(session, base_url, kind, run)
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.fail(kind.name, repr(exc))
            run.requests += 1
            if run.requests == run.mark:
                run.rss_mark_mb = router_rss_mb()

    async with session:
        await asyncio.gather(*(worker() for _ in range(connections)))
        run.elapsed_s = time.perf_counter() - begin
        run.rss_end_mb = router_rss_mb()
    return run


def soak(
    base_url: str,
    requests: int,
    connections: int,
    deadline_s: float,
    router_pid: int,
    backend_port: int,
    router_rss_mb: Callable[[], float],
) -> SoakRun:
    """``requests`` mixed requests over ``connections`` connections, all done by ``deadline_s``.

    ``base_url``: the router's, without a path. Descriptors are counted before the first
    request and after the client's connections are all closed.
    """
    before = descriptors(router_pid, backend_port)
    run = uvloop.run(_soak(base_url, requests, connections, deadline_s, router_rss_mb))
    run.fds_before = before
    run.fds_after = _settled(router_pid, backend_port, before.own)
    return run


def _settled(pid: int, backend_port: int, own_before: int) -> Descriptors:
    """The count once the router has closed what its clients closed (bounded wait)."""
    give_up = time.monotonic() + _FD_SETTLE_S
    while True:
        now = descriptors(pid, backend_port)
        if now.own <= own_before or time.monotonic() > give_up:
            return now
        time.sleep(0.05)
