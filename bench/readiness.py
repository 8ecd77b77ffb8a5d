"""Readiness detection lag: from a backend's health turning 200 to its first routed request.

``serve`` is started with a fake ``llama-server`` first on its PATH: this module, run as a
program. It waits a moment (a model "loading"; nothing listens, so health probes are
refused), then starts answering, noting the time it began to listen and the time the first
chat request reached it. Meanwhile a client has already sent a chat request, which the
router holds until it sees the backend ready. The difference of the two times is the lag a
user waits beyond the model's own loading. Both are CLOCK_MONOTONIC readings, which are
comparable across processes on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import stat
import sys
import time
from pathlib import Path

import uvloop

from bench.backend import BenchProtocol
from bench.procs import HOST, Started, free_port, running, spawn, wait_healthy
from bench.router import AUTH_HEADERS, MODEL_ID, write_config

_LOADING_S_ENV = "SLM_BENCH_LOADING_S"
_TIMES_FILE_ENV = "SLM_BENCH_TIMES_FILE"
_CHAT_BODY = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})


def measure_lag(tmp: Path, cpu: int | None, loading_s: float = 1.0) -> float:
    """One ``serve`` start: seconds from the backend listening to its first chat request."""
    run_dir = tmp / f"readiness-{time.monotonic_ns()}"
    run_dir.mkdir()
    times_file = run_dir / "times.json"
    router_port = free_port()
    config = write_config(run_dir, free_port())  # its model file is never opened
    command = [sys.executable, "-m", "slm_server", "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(router_port), "--log-level", "warning"]
    env = {
        "PATH": f"{_fake_llama_server_dir(tmp)}{os.pathsep}{os.environ['PATH']}",
        # The fake passes serve's check of a llama-server (it answers /completion); its
        # result, and any built llama-server, stay out of the user's own cache.
        "SLM_SERVER_CACHE": str(tmp / "slm-server-cache"),
        _LOADING_S_ENV: str(loading_s),
        _TIMES_FILE_ENV: str(times_file),
    }
    router = spawn(f"readiness-serve-{run_dir.name}", command, tmp, cpu, env=env)
    with running(router):
        wait_healthy(router, router_port, 30)
        _chat(router, router_port)  # held by the router until the backend is ready
        times = json.loads(times_file.read_text())
    return float(times["first_request"] - times["listening"])


def _fake_llama_server_dir(tmp: Path) -> Path:
    bin_dir = tmp / "fake-llama-server-bin"
    script = bin_dir / "llama-server"
    if not script.exists():
        bin_dir.mkdir(exist_ok=True)
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bench.readiness "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _chat(router: Started, port: int) -> None:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        headers = {"content-type": "json", **AUTH_HEADERS}
        connection.request("POST", "/v1/chat/completions", _CHAT_BODY, headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        detail = f"{response.status} {body[:200]!r}\n{router.log_tail()}"
        raise RuntimeError(f"chat through serve: {detail}")


class _FirstRequestNoted(BenchProtocol):
    """The bench backend, noting when the first chat request reaches it."""

    listening = 0.0
    first_request: float | None = None
    times_file = Path()

    def data_received(self, data: bytes) -> None:
        cls = type(self)
        if cls.first_request is None and data.startswith(b"POST /v1/chat/completions"):
            cls.first_request = time.monotonic()
            times = {"listening": cls.listening, "first_request": cls.first_request}
            cls.times_file.write_text(json.dumps(times))
        super().data_received(data)


async def _serve_after_loading(host: str, port: int, loading_s: float) -> None:
    await asyncio.sleep(loading_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FirstRequestNoted, host, port, reuse_address=True)
    _FirstRequestNoted.listening = time.monotonic()  # health answers 200 from here on
    async with server:
        await server.serve_forever()


def main() -> None:
    """The fake ``llama-server``: takes its command line, uses only --host and --port."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    _FirstRequestNoted.times_file = Path(os.environ[_TIMES_FILE_ENV])
    uvloop.run(_serve_after_loading(args.host, args.port, float(os.environ[_LOADING_S_ENV])))


if __name__ == "__main__":
    main()
