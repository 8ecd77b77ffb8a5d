"""Plain-request load with wrk: one run, its figures parsed from chat.lua's report line."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import pinned
from bench.router import API_KEY, API_KEY_ENV

LUA_SCRIPT = Path(__file__).with_name("chat.lua")
_MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class WrkRun:
    requests: int
    duration_s: float
    errors: int  # responses with status >= 400 plus socket errors and timeouts
    p50_ms: float
    p99_ms: float
    # Responses with status >= 400: among ``requests`` (read whole), unlike socket errors.
    status_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (result.stdout or result.stderr).splitlines()[0]
    return first.split(" Copyright")[0].removeprefix("wrk ").strip()


def run_wrk(
    url: str,
    connections: int,
    duration_s: float,
    cpu: int | None,
    sample: Callable[[], None] | None = None,
) -> WrkRun:
    """One wrk run; ``sample`` is called every 100 ms while it runs (for RSS)."""
    # One thread: the load generator has one CPU, and more threads would only contend.
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    process = subprocess.Popen(
        pinned(cpu, command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {API_KEY_ENV: API_KEY},
    )
    if sample is not None:
        while process.poll() is None:
            sample()
            time.sleep(0.1)
    stdout, stderr = process.communicate()
    for line in stdout.splitlines():
        if line.startswith(_MARKER):
            report = json.loads(line.removeprefix(_MARKER))
            return WrkRun(
                requests=report["requests"],
                duration_s=report["duration_us"] / 1e6,
                errors=report["status_errors"] + report["socket_errors"],
                p50_ms=report["p50_us"] / 1000,
                p99_ms=report["p99_us"] / 1000,
                status_errors=report["status_errors"],
            )
    raise RuntimeError(f"wrk gave no report (exit {process.returncode}):\n{stdout}\n{stderr}")
