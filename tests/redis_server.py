"""A real ``redis-server`` (the Debian package) on a free loopback port, for tests.

Without redis-server on PATH the tests that need it skip, saying why, unless
``SLM_REQUIRE_REDIS=1`` (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from net import free_port, wait_until


class RedisServer:
    """``redis-server`` without persistence on 127.0.0.1:``port``; stopped by its PID."""

    def __init__(self, tmp_dir: Path, port: int | None = None) -> None:
        self.tmp_dir = tmp_dir
        self.port = port or free_port()
        self.log_path = tmp_dir / f"redis-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        assert self._proc is None, "already started"
        # No persistence: a restarted server starts empty, as after losing its data.
        options = ["--save", "", "--appendonly", "no", "--dir", str(self.tmp_dir)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 10, f"redis-server on port {self.port} ({self.log_path})")
        return self

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.log_path.read_text()}")
        try:
            return self.command(b"PING") == b"+PONG\r\n"
        except OSError:
            return False

    def command(self, *words: bytes) -> bytes:
        """One command in Redis's protocol; its raw reply (small replies only)."""
        request = b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%s\r\n" % (len(word), word) for word in words
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    def keys(self) -> list[bytes]:
        """The names of the keys the router made (``slm:resp:*``)."""
        reply = self.command(b"KEYS", b"slm:resp:*").split(b"\r\n")
        return [line for line in reply[2::2] if line]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_server_binary() -> str:
    """redis-server's path; skips the test without it (fails with SLM_REQUIRE_REDIS=1)."""
    binary = shutil.which("redis-server")
    if binary is not None:
        return binary
    why = "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
    if os.environ.get("SLM_REQUIRE_REDIS") == "1":
        pytest.fail(f"{why}, and SLM_REQUIRE_REDIS=1 asks for the tests that need it")
    pytest.skip(why)


@contextmanager
def running_redis(tmp_dir: Path, port: int | None = None) -> Iterator[RedisServer]:
    """A started ``RedisServer``, stopped on the way out."""
    server = RedisServer(tmp_dir, port).start()
    try:
        yield server
    finally:
        server.stop()
