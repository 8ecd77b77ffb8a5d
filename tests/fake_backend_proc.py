"""Running ``fake_backend.py`` as a real subprocess, and talking to its control API.

Typical use::

    with running_fake_backend(["--chunks", "3"]) as fake:
        httpx.post(f"{fake.url}/v1/chat/completions", json=...)
        fake.control(fail_status=503)       # reconfigure at run time
        assert fake.stats()["completed"] == 1

or, for a module-scoped fixture, ``fake = FakeBackend().start(args)`` and
``fake.stop()`` in a ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

SCRIPT = Path(__file__).with_name("fake_backend.py")


class FakeBackend:
    """A fake OpenAI-compatible backend on a free loopback port.

    ``start()`` returns once the process has printed ``READY <port>``;
    ``control()`` changes its behaviour at run time (keys of
    ``fake_backend.Config`` plus ``reset`` and ``reset_stats``).
    """

    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ignores_sigterm = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self, args: Sequence[str] = (), timeout: float = 10) -> FakeBackend:
        """Launch ``fake_backend.py --port 0 *args``; wait (at most ``timeout``) for READY."""
        if isinstance(args, str):
            raise TypeError("args must be a sequence of strings, not a string")
        assert self._proc is None, "already started"
        command = [sys.executable, str(SCRIPT), "--port", "0", "--parent-pid", str(os.getpid())]
        self._ignores_sigterm = "--ignore-sigterm" in args
        self._proc = proc = subprocess.Popen(
            [*command, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        line = _read_line(proc.stdout.fileno(), timeout)
        if not line.startswith("READY "):
            self.stop(grace=0)
            raise RuntimeError(
                f"fake backend did not start within {timeout}s "
                f"(exit status {proc.returncode}): {line!r}"
            )
        self.port = int(line.split()[1])
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self, timeout: float) -> int | None:
        """The exit status once the process has ended, waiting at most ``timeout``."""
        assert self._proc is not None, "not started"
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        with httpx.Client(trust_env=False, timeout=5) as client:
            response = client.request(method, f"{self.url}{path}", json=payload)
        response.raise_for_status()
        return response.json()

    def control(self, **switches: Any) -> dict[str, Any]:
        """Change switches (``fail_status=503``, ``reset=True``, ...); returns all of them."""
        return dict(self._call("POST", "/_fake/control", switches))

    def stats(self) -> dict[str, int]:
        """``requests``, ``in_flight``, ``max_in_flight``, ``cancelled``, ``completed``."""
        return dict(self._call("GET", "/_fake/stats"))

    def wait_stats(self, timeout: float = 5, **expected: int) -> dict[str, int]:
        """Poll ``stats()`` until every ``expected`` item matches; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if all(stats.get(k) == v for k, v in expected.items()):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"stats {stats} never matched {expected} in {timeout}s")
            time.sleep(0.02)

    async def wait_stats_async(self, **expected: int) -> dict[str, int]:
        """``wait_stats`` (5 s) that keeps the event loop running, for in-process routers."""
        stats: dict[str, int] = {}
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            try:
                async with asyncio.timeout(5):
                    while True:
                        response = await client.get(f"{self.url}/_fake/stats")
                        response.raise_for_status()
                        stats = response.json()
                        if all(stats.get(k) == v for k, v in expected.items()):
                            return stats
                        await asyncio.sleep(0.02)
            except TimeoutError:
                raise AssertionError(f"stats {stats} never matched {expected} in 5s") from None

    def last_request(self) -> dict[str, Any]:
        """``method``, ``path``, ``query``, ``headers`` (lower-case names), ``body`` (raw text)
        of the last request other than ``/health`` and ``/_fake/*``."""
        seen = self._call("GET", "/_fake/last_request")
        if seen is None:
            raise AssertionError("the fake backend has not received any request yet")
        return dict(seen)

    def stop(self, grace: float = 5) -> None:
        """Terminate by PID; kill if it ignores SIGTERM for ``grace`` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                if self._ignores_sigterm:
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> FakeBackend:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def running_fake_backend(args: Sequence[str] = (), timeout: float = 10) -> Iterator[FakeBackend]:
    """A started ``FakeBackend``, stopped on exit (use in fixtures or ``with`` blocks)."""
    fake = FakeBackend().start(args, timeout)
    try:
        yield fake
    finally:
        fake.stop()


def _read_line(fd: int, timeout: float) -> str:
    """First line written to ``fd`` within ``timeout`` ("" on EOF or timeout)."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")
