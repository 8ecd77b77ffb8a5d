"""Network helpers for tests: free loopback ports and polling with a deadline."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections (Linux's default if unread)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A loopback port free right now, for a server a test starts.

    Taken below the kernel's ephemeral range when there is room: a port from that range
    may go to some outgoing connection (a client, a router's upstream) between this
    check and the server binding it, which made a test's llama-server fail to start.
    """
    ephemeral = _ephemeral_ports()
    if ephemeral.start > 20000:
        for _ in range(100):
            port = random.randrange(20000, ephemeral.start)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], bool], within_s: float, what: str) -> None:
    """``wait_until`` for async tests: polls every 10 ms without blocking the event loop."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive loopback ports free right now (replicas take
    ``port``, ``port + 1``, ...)."""
    for _ in range(attempts):
        first = free_port()
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise AssertionError(f"found no {count} consecutive free ports in {attempts} tries")
