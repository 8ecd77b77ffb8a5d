"""The router run for real: ``python -m slm_server router`` (or ``serve``) in a subprocess."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from net import free_port, wait_until


class RouterProcess:
    """A router subprocess on a free loopback port, for end-to-end tests."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        tmp_dir: Path,
        command: str = "router",
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        args: list[str] | None = None,
    ) -> None:
        """``config`` None: no config file at all (``serve`` then uses its built-in default).

        ``env``: variables set for the router on top of this process's environment.
        ``api_key``: sent to ``/v1/backends/health`` (by ``backends``), for a router with keys.
        ``args``: more command-line arguments (e.g. ``--log-format json``).
        """
        self.command = command
        self.auth = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
        self.args = args or []
        self.env = {k: v for k, v in os.environ.items() if k != "SLM_SERVER_CONFIG"} | (env or {})
        self.tmp_dir = tmp_dir
        self.config_args: list[str] = []
        if config is not None:
            config_path = tmp_dir / "models.yaml"
            config_path.write_text(yaml.safe_dump(config))
            self.config_args = ["--config", str(config_path)]
        self.log_path = tmp_dir / "router.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slm_server",
                    self.command,
                    *self.config_args,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_dir,
                env=self.env,
            )
        # Generous: on a loaded machine (tests in parallel, real models loading) a router
        # has taken over 15 s to import and bind; a router that never comes up still fails.
        wait_until(self._healthy, 60, f"router on port {self.port} (log: {self.log_path})")
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def backends(self) -> dict[str, dict[str, Any]]:
        """``/v1/backends/health``: role -> report."""
        report: dict[str, dict[str, Any]] = httpx.get(
            f"{self.url}/v1/backends/health", headers=self.auth, timeout=10
        ).json()
        return report

    def wait_backends_ready(self, timeout: float) -> dict[str, dict[str, Any]]:
        def all_ready() -> bool:
            states = {role: r.get("state") for role, r in self.backends().items()}
            if "failed" in states.values():
                raise AssertionError(f"a backend failed: {self.backends()}\n{self.log()}")
            return all(state == "ready" for state in states.values())

        wait_until(all_ready, timeout, f"backends ready (log: {self.log_path})")
        return self.backends()

    def _healthy(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"router exited:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def openai(self) -> openai.OpenAI:
        """The official SDK pointed at this router (no retries: tests see every failure)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="-", max_retries=0)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has ended by itself within ``timeout``."""
        assert self._proc is not None, "not started"
        code = self._proc.wait(timeout)
        self._proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


@contextlib.contextmanager
def serving(process: RouterProcess, ready_within_s: float) -> Iterator[RouterProcess]:
    """``process`` started with all its backends ready; stopped on the way out."""
    process.start()
    try:
        process.wait_backends_ready(ready_within_s)
        yield process
    finally:
        process.stop()
