"""Running ``fake_backend.py`` as a real subprocess, and talking to its control API."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

SCRIPT = Path(__file__).with_name("fake_backend.py")


class FakeBackend:
    """A fake OpenAI-compatible backend on a free loopback port.

    ``start()`` returns once the process has printed ``READY <port>``;
    ``control()`` changes its behaviour at run time (see ``fake_backend.Config``).
    """

    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self, args: Sequence[str] = (), timeout: float = 10) -> FakeBackend:
        command = [sys.executable, str(SCRIPT), "--port", "0", "--parent-pid", str(os.getpid())]
        self._proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake backend did not start within {timeout}s: {line!r}")
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
        response = httpx.request(method, f"{self.url}{path}", json=payload, timeout=5)
        response.raise_for_status()
        return response.json()

    def control(self, **switches: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_fake/control", switches))

    def stats(self) -> dict[str, int]:
        return dict(self._call("GET", "/_fake/stats"))

    def last_request(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_fake/last_request"))

    def stop(self, grace: float = 5) -> None:
        """Terminate by PID; kill if it ignores SIGTERM for ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
