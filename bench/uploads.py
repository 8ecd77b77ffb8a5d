"""Large uploads at once: how much memory the router holds for request bodies.

Every body is held whole until its ``model`` is read (it may come last, as the OpenAI
SDK writes it), so concurrent large uploads are what can take the router's memory.
Its bound (``router.max_inflight_body_mb``) refuses an upload that would cross it with
503 and ``Retry-After``; the clients here do what the SDKs do with that answer: wait
that long and send again. The figures: the router's peak RSS, and every upload answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import uvloop

from bench.router import AUTH_HEADERS, MODEL_ID

_ATTEMPTS = 60  # per upload; with Retry-After of about a second, a minute at most
_SAMPLE_EVERY_S = 0.02


@dataclass
class UploadRun:
    uploads: int = 0  # answered 200
    refused: int = 0  # 503 answers that were retried
    errors: int = 0  # anything else: another status, a broken connection, out of attempts
    elapsed_s: float = 0.0
    rss_mb: list[float] = field(default_factory=list)  # sampled while uploading

    @property
    def peak_rss_mb(self) -> float:
        return max(self.rss_mb, default=float("nan"))


def upload_body(size_mb: float) -> bytes:
    """A chat request of about ``size_mb`` MiB, ``model`` last as the SDK writes it."""
    text = "x" * int(size_mb * 1024 * 1024)
    return json.dumps({"messages": [{"role": "user", "content": text}], "model": MODEL_ID}).encode()


async def _one_upload(
    session: aiohttp.ClientSession, url: str, body: bytes, run: UploadRun
) -> None:
    headers = {"content-type": "application/json", **AUTH_HEADERS}
    for _ in range(_ATTEMPTS):
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status == 200:
                run.uploads += 1
                return
            if response.status != 503:
                run.errors += 1
                return
            run.refused += 1
            retry_after = float(response.headers.get("retry-after", "1"))
        await asyncio.sleep(retry_after)
    run.errors += 1


async def _upload_load(
    url: str, concurrency: int, size_mb: float, rss: Callable[[], float]
) -> UploadRun:
    body = upload_body(size_mb)
    run = UploadRun()
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            run.rss_mb.append(rss())
            await asyncio.sleep(_SAMPLE_EVERY_S)

    timeout = aiohttp.ClientTimeout(total=_ATTEMPTS * 2)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample())
        begin = time.perf_counter()

        async def upload() -> None:
            try:
                await _one_upload(session, url, body, run)
            except (aiohttp.ClientError, TimeoutError):
                run.errors += 1

        try:
            await asyncio.gather(*(upload() for _ in range(concurrency)))
        finally:
            run.elapsed_s = time.perf_counter() - begin
            done.set()
            await sampler
    return run


def upload_load(url: str, concurrency: int, size_mb: float, rss: Callable[[], float]) -> UploadRun:
    """``concurrency`` clients each posting one ``size_mb`` MiB body at once, retrying 503s;
    ``rss``: the router's resident memory in MiB, sampled every 20 ms meanwhile."""
    return uvloop.run(_upload_load(url, concurrency, size_mb, rss))
