"""asyncio clients: concurrent SSE streams, and a plain-request sampler for the overhead header.

Both keep the client's own work per byte small (no SSE parsing beyond
counting event separators) because the client shares a CPU with the backend.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import uvloop

from bench.router import AUTH_HEADERS, MODEL_ID

OVERHEAD_HEADER = "x-slm-overhead-ms"
_MESSAGES = [{"role": "user", "content": "Hello"}]
_PLAIN_BODY = json.dumps({"model": MODEL_ID, "messages": _MESSAGES, "max_tokens": 16}).encode()
_JSON = {"content-type": "application/json", **AUTH_HEADERS}
# Below the servers' keep-alive limits (uvicorn's 5 s, the router's pool's 4 s).
_STAGGER_MAX_S = 3.0


@dataclass
class StreamRun:
    """Figures of one streaming run; times in milliseconds."""

    streams: int = 0
    chunks: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    target_cpu_s: float = 0.0  # CPU the measured process used while streams were timed
    load_cpu_s: float = 0.0  # CPU of the load CPU's processes (client, backend) meanwhile
    reads: int = 0  # body pieces the client read in the streams counted: chunks / reads > 1
    # says events came together (a proxy or the client fell behind and they queued)
    ttfc_ms: list[float] = field(default_factory=list)  # request sent -> first body bytes
    stream_ms: list[float] = field(default_factory=list)  # request sent -> end of stream
    overhead_ms: list[float] = field(default_factory=list)  # the router's header, if present

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def events_per_read(self) -> float:
        """Events (chunks and [DONE]) per body piece the client read."""
        return (self.chunks + self.streams) / self.reads if self.reads else float("nan")

    @property
    def load_busy(self) -> float:
        """The share of the load CPU that the client and the backend kept busy."""
        return self.load_cpu_s / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def ttfc_p50_ms(self) -> float:
        return statistics.median(self.ttfc_ms) if self.ttfc_ms else float("nan")

    @property
    def stream_p50_ms(self) -> float:
        return statistics.median(self.stream_ms) if self.stream_ms else float("nan")


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
    )


async def _one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, expected: int, run: StreamRun
) -> None:
    begin = time.perf_counter()
    async with session.post(url, data=body, headers=_JSON) as response:
        if response.status != 200:
            await response.read()
            run.errors += 1
            return
        first: float | None = None
        events = 0
        reads = 0
        tail = b""
        async for chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter()
            # "\n\n" ends each SSE event; one carried byte catches a split separator.
            events += (tail + chunk).count(b"\n\n")
            reads += 1
            tail = chunk[-1:]
        end = time.perf_counter()
    chunks = events - 1  # the last event is "data: [DONE]"
    if first is None or chunks != expected:
        run.errors += 1
        return
    run.streams += 1
    run.chunks += chunks
    run.reads += reads
    run.ttfc_ms.append((first - begin) * 1000)
    run.stream_ms.append((end - begin) * 1000)
    value = response.headers.get(OVERHEAD_HEADER)
    if value is not None:
        run.overhead_ms.append(float(value))


def _stream_body(chunks: int, gap_ms: float) -> bytes:
    return json.dumps(
        {
            "model": MODEL_ID,
            "messages": _MESSAGES,
            "stream": True,
            "bench_chunks": chunks,
            "bench_gap_ms": gap_ms,
        }
    ).encode()


def _no_cpu() -> float:
    return 0.0


async def _stream_load(
    url: str,
    concurrency: int,
    chunks: int,
    gap_ms: float,
    duration_s: float,
    cpu_clock: Callable[[], float],
    load_clock: Callable[[], float],
    staggered: bool,
) -> StreamRun:
    body = _stream_body(chunks, gap_ms)
    run = StreamRun()
    async with _session(concurrency) as session:
        # One unmeasured stream per connection first: every target starts with warm pools.
        # Staggered runs only need the connections open: a one-chunk stream does that.
        warm_chunks = 1 if staggered else chunks
        warm_body = _stream_body(1, 0) if staggered else body
        warmup = StreamRun()
        await asyncio.gather(
            *(_one_stream(session, url, warm_body, warm_chunks, warmup) for _ in range(concurrency))
        )
        # Staggered: each client starts at its own random point within one stream's length
        # (the same points for every target), so requests and chunks arrive spread over
        # time as a steady load's do, not all in one burst per gap. Within _STAGGER_MAX_S
        # at most: a connection warmed and left idle longer is closed by the server.
        spread_s = min(chunks * gap_ms / 1000, _STAGGER_MAX_S)
        draw = random.Random(concurrency)
        starts = [draw.uniform(0, spread_s) if staggered else 0.0 for _ in range(concurrency)]
        cpu_before, load_before = cpu_clock(), load_clock()
        begin = time.perf_counter()
        stop_at = begin + duration_s

        async def worker(start_s: float) -> None:
            if start_s:
                await asyncio.sleep(start_s)
            while time.perf_counter() < stop_at:
                try:
                    await _one_stream(session, url, body, chunks, run)
                except (aiohttp.ClientError, TimeoutError):
                    run.errors += 1

        await asyncio.gather(*(worker(start) for start in starts))
        # Streams started before the deadline finish after it; the rate counts their time.
        run.elapsed_s = time.perf_counter() - begin
        run.target_cpu_s = cpu_clock() - cpu_before
        run.load_cpu_s = load_clock() - load_before
    return run


def stream_load(
    url: str,
    concurrency: int,
    chunks: int,
    gap_ms: float,
    duration_s: float,
    cpu_clock: Callable[[], float] = _no_cpu,
    *,
    load_clock: Callable[[], float] = _no_cpu,
    staggered: bool = False,
) -> StreamRun:
    """``concurrency`` clients, each streaming back to back for ``duration_s``.

    ``cpu_clock``: CPU seconds of the process under test, read around the timed part;
    ``load_clock``: those of the load generators (this process and the backend).
    ``staggered``: each client starts at a random point within one stream's length.
    """
    return uvloop.run(
        _stream_load(url, concurrency, chunks, gap_ms, duration_s, cpu_clock, load_clock, staggered)
    )


@dataclass
class PlainSample:
    latency_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    errors: int = 0


async def _plain_sample(url: str, concurrency: int, duration_s: float) -> PlainSample:
    sample = PlainSample()
    async with _session(concurrency) as session:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                begin = time.perf_counter()
                async with session.post(url, data=_PLAIN_BODY, headers=_JSON) as response:
                    await response.read()
                    if response.status != 200:
                        sample.errors += 1
                        continue
                    sample.latency_ms.append((time.perf_counter() - begin) * 1000)
                    value = response.headers.get(OVERHEAD_HEADER)
                    if value is not None:
                        sample.overhead_ms.append(float(value))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sample


def plain_sample(url: str, concurrency: int, duration_s: float) -> PlainSample:
    """Plain requests through aiohttp, to read the router's overhead header on each."""
    return uvloop.run(_plain_sample(url, concurrency, duration_s))
