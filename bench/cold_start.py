"""The router's own part of a cold start: a request for a model that is not running.

``serve`` runs the bench backend as an on-demand ``llamacpp`` entry, through a fake
``llama-server`` first on its PATH (``bench.cold_backend``). Each cold start: unload the
model through the API, then time one chat request. Four moments are noted, all
CLOCK_MONOTONIC readings (comparable across processes on one machine):

- ``sent``: the client sends the request (harness);
- ``started``: the fake's first line of Python runs (fake);
- ``health_ok``: the fake answers the router's readiness probe with 200 (fake);
- ``first_byte``: the client has the response's status line and headers (harness).

The router's part is (``started`` - ``sent`` - the interpreter's own start-up) plus
(``first_byte`` - ``health_ok``): from the request's arrival to the backend's spawn, and
from its readiness being noticed to the answer's first byte reaching the client. The
interpreter's start-up (fork, exec, Python up to that first line) is measured by starting
the same program directly, on the same CPU, and its median subtracted. What lies between
(the backend loading, up to listening, and the wait for the router's next readiness
poll) is the backend's and the poll interval's, shown apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import uvloop
import yaml

from bench.backend import BenchProtocol
from bench.procs import HOST, Started, free_port, running, spawn, wait_healthy
from bench.router import ADMIN_HEADERS, AUTH_HEADERS, MODEL_ID, write_config

_TIMES_FILE_ENV = "SLM_BENCH_COLD_TIMES_FILE"
_STARTED_ONLY_ENV = "SLM_BENCH_COLD_STARTED_ONLY"  # note the start, write it, exit
_CHAT_BODY = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
_JSON = {"content-type": "application/json", **AUTH_HEADERS}
_REQUEST_TIMEOUT_S = 30
# The router reads the whole llama-server binary on each start (its checksum finds the
# kept verdict of its check), so the fake is padded to a real build's size: 15.3 MB for
# the x86-64-v3 build here. The shell never reads the padding: it has exec'd by then.
_BINARY_BYTES = 15_000_000


@dataclass(frozen=True)
class ColdStart:
    """One cold request, in seconds."""

    total_s: float  # request sent to the answer's first byte
    to_spawn_s: float  # request sent to the backend's spawn, less the interpreter start-up
    to_first_byte_s: float  # readiness probe answered to the answer's first byte
    poll_wait_s: float  # backend listening to its readiness probe answered

    @property
    def router_s(self) -> float:
        return self.to_spawn_s + self.to_first_byte_s


def measure_cold_starts(tmp: Path, cpu: int | None, count: int) -> list[ColdStart]:
    """``count`` cold requests through one ``serve``; the interpreter's start-up subtracted."""
    run_dir = tmp / "cold-start"
    run_dir.mkdir()
    wrapper = _fake_llama_server(run_dir)
    with _on_cpu(cpu):
        interpreter_s = statistics.median(
            _interpreter_start(wrapper, run_dir) for _ in range(max(count, 3))
        )
    times_file = run_dir / "times.json"
    router_port = free_port()
    command = [sys.executable, "-m", "slm_server", "serve", "--config", str(_config(run_dir))]
    command += ["--host", HOST, "--port", str(router_port)]  # logging at INFO, as users run it
    env = {
        "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}",
        # The fake passes serve's check of a llama-server (it answers /completion); the
        # check's result stays out of the user's own cache.
        "SLM_SERVER_CACHE": str(run_dir / "slm-server-cache"),
        _TIMES_FILE_ENV: str(times_file),
    }
    router = spawn("cold-start-serve", command, tmp, cpu, env=env)
    starts = []
    with running(router):
        wait_healthy(router, router_port, 30)
        # Not counted: serve's first start of a llama-server checks the binary once
        # (a model loaded, a token generated), and keeps the verdict for later starts.
        _chat(router, router_port)
        _unload(router, router_port)
        for _ in range(count):
            times_file.unlink(missing_ok=True)
            sent, first_byte = _chat(router, router_port)
            fake = json.loads(times_file.read_text())
            starts.append(
                ColdStart(
                    total_s=first_byte - sent,
                    to_spawn_s=fake["started"] - sent - interpreter_s,
                    to_first_byte_s=first_byte - fake["health_ok"],
                    poll_wait_s=fake["health_ok"] - fake["listening"],
                )
            )
            _unload(router, router_port)
    return starts


def _config(run_dir: Path) -> Path:
    """The bench model on demand, under a memory budget, as the issue's users run it."""
    path = write_config(run_dir, free_port())  # its model file is never opened
    config = yaml.safe_load(path.read_text())
    config["models"][MODEL_ID] |= {"on_demand": True, "memory_gb": 0.5}
    config["router"]["memory_budget_gb"] = 1.0
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fake_llama_server(run_dir: Path) -> Path:
    bin_dir = run_dir / "fake-llama-server-bin"
    bin_dir.mkdir()
    script = bin_dir / "llama-server"
    command = f'#!/bin/sh\nexec "{sys.executable}" -m bench.cold_backend "$@"\n'.encode()
    padding = b"#" * (_BINARY_BYTES - len(command) - 1) + b"\n"
    script.write_bytes(command + padding)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@contextlib.contextmanager
def _on_cpu(cpu: int | None) -> Iterator[None]:
    """This process on the router's CPU meanwhile: its children start where the router's
    do (a child moved to another CPU as it starts takes milliseconds longer)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _interpreter_start(wrapper: Path, run_dir: Path) -> float:
    """Seconds from starting the fake to its first line, started as the router starts a
    backend: fork (a pre-exec hook rules out vfork), a new session, exec."""
    times_file = run_dir / "started.json"
    env = {**os.environ, _TIMES_FILE_ENV: str(times_file), _STARTED_ONLY_ENV: "1"}
    before = time.monotonic()
    process = subprocess.Popen(
        [str(wrapper), "--port", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_nothing,
    )
    if process.wait(_REQUEST_TIMEOUT_S) != 0:
        raise RuntimeError(f"the fake llama-server exited with {process.returncode}")
    return float(json.loads(times_file.read_text())["started"]) - before


def _nothing() -> None:
    pass


def _chat(router: Started, port: int) -> tuple[float, float]:
    """When the request was sent and when its answer's first byte (the head) arrived."""
    connection = http.client.HTTPConnection(HOST, port, timeout=_REQUEST_TIMEOUT_S)
    try:
        connection.connect()  # not timed: a client's connection is open before it asks
        sent = time.monotonic()
        connection.request("POST", "/v1/chat/completions", _CHAT_BODY, _JSON)
        response = connection.getresponse()
        first_byte = time.monotonic()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200 or b"chat.completion" not in body:
        detail = f"{response.status} {body[:200]!r}\n{router.log_tail()}"
        raise RuntimeError(f"cold request through serve: {detail}")
    return sent, first_byte


def _unload(router: Started, port: int) -> None:
    connection = http.client.HTTPConnection(HOST, port, timeout=_REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", f"/v1/backends/{MODEL_ID}/unload", headers=ADMIN_HEADERS)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200 or json.loads(body).get("state") != "unloaded":
        raise RuntimeError(f"unload: {response.status} {body[:200]!r}\n{router.log_tail()}")


class _TimesNoted(BenchProtocol):
    """The bench backend, noting when it answered its first health probe and first chat."""

    # One connection per probe or request: the notes are the process's, not a connection's.
    times: ClassVar[dict[str, float]] = {}
    times_file: ClassVar[Path] = Path()

    def data_received(self, data: bytes) -> None:
        times = type(self).times
        if "health_ok" not in times and data.startswith(b"GET /health "):
            times["health_ok"] = time.monotonic()  # answered 200 just below
        elif "chat" not in times and data.startswith(b"POST /v1/chat/completions"):
            times["chat"] = time.monotonic()
            _write(type(self).times_file, times)  # before answering: complete once answered
        super().data_received(data)


def _write(path: Path, times: dict[str, float]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(times))
    partial.replace(path)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TimesNoted, host, port, reuse_address=True)
    _TimesNoted.times["listening"] = time.monotonic()
    async with server:
        await server.serve_forever()


def serve_noting_times(started: float) -> None:
    """The fake ``llama-server``: takes its command line, uses only --host and --port."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    times_file = Path(os.environ[_TIMES_FILE_ENV])
    if os.environ.get(_STARTED_ONLY_ENV):
        _write(times_file, {"started": started})
        return
    _TimesNoted.times_file = times_file
    _TimesNoted.times["started"] = started
    uvloop.run(_serve(args.host, args.port))
