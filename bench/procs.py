"""Starting, pinning, probing and stopping the processes under test."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the OS picks it, so parallel runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None, command: Sequence[str]) -> list[str]:
    """``command`` run on one CPU: taskset execs it, so the child's PID is the command's."""
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


@dataclass
class Started:
    """A process this harness started; only these are ever signalled."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Its children count as part of it (nginx: master plus worker).
    with_children: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn(
    name: str,
    command: Sequence[str],
    log_dir: Path,
    cpu: int | None,
    with_children: bool = False,
    env: dict[str, str] | None = None,
) -> Started:
    """``command`` started with its output to ``log_dir/name.log``; ``env`` adds variables."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            pinned(cpu, command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return Started(name, process, log_path, with_children)


@contextlib.contextmanager
def running(started: Started, stop_signal: signal.Signals = signal.SIGTERM) -> Iterator[Started]:
    try:
        yield started
    finally:
        started.stop(stop_signal)


def health_ok(port: int, path: str = "/health", timeout: float = 1.0) -> bool:
    """One GET on a fresh connection; False while nothing listens yet."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_healthy(started: Started, port: int, timeout: float, poll_s: float = 0.002) -> float:
    """Seconds until ``port`` answers 200 on /health; raises if the process dies or times out.

    The poll interval is short because start-up time is one of the measured figures.
    """
    begin = time.perf_counter()
    while True:
        if health_ok(port):
            return time.perf_counter() - begin
        if started.process.poll() is not None:
            raise RuntimeError(
                f"{started.name} exited with {started.process.returncode}:\n{started.log_tail()}"
            )
        if time.perf_counter() - begin > timeout:
            raise RuntimeError(f"{started.name} not healthy in {timeout}s:\n{started.log_tail()}")
        time.sleep(poll_s)


def _members(started: Started) -> list[psutil.Process]:
    process = psutil.Process(started.pid)
    return [process, *process.children(recursive=True)] if started.with_children else [process]


def rss_mb(started: Started) -> float:
    """Resident set size in MiB."""
    total = 0
    for member in _members(started):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total / (1024 * 1024)


def cpu_s(started: Started) -> float:
    """CPU seconds used so far (user + system).

    Per request, this is the figure least disturbed by other work on the
    machine: a busy CPU stretches latency, not the work done per request.
    """
    total = 0.0
    for member in _members(started):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def choose_cpus(proxy_cpu: int | None, load_cpu: int | None) -> tuple[int | None, int | None]:
    """The proxy's CPU and the one shared by backend and load generators.

    With fewer than two usable CPUs nothing is pinned: the figures are then
    only good for comparing targets with each other.
    """
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    proxy = usable[0] if proxy_cpu is None else proxy_cpu
    load = next(c for c in usable if c != proxy) if load_cpu is None else load_cpu
    return proxy, load


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        sys.exit(
            f"bench: missing {', '.join(missing)}; on Debian/Ubuntu: "
            "apt-get install wrk nginx-light (taskset is in util-linux)"
        )
