"""Replicated backends: fake servers behind one ``backend: openai`` entry with ``base_urls``.

Each fake counts the chat requests it receives (``GET /bench/served``), so a
replica's share is read from the replica itself, whatever the router says about
where it sent them. The router is pinned to the proxy CPU; the fakes and the load
generators share the load CPU.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HOST, Started, cpu_s, free_port, running, spawn, wait_healthy
from bench.router import start_router, write_openai_config
from bench.wrk import WrkRun, run_wrk

HEALTH_TIMEOUT_S = 30
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Served:
    """What one fake has received: chat requests, and when the first arrived (monotonic)."""

    requests: int
    first_at: float | None


def served(port: int, timeout: float = 2.0) -> Served:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", "/bench/served")
        report = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return Served(int(report["requests"]), report["first_at"])


def start_fake(tmp: Path, port: int, cpu: int | None, name: str) -> Started:
    command = [sys.executable, "-m", "bench.backend", "--port", str(port)]
    return spawn(name, command, tmp, cpu)


@contextlib.contextmanager
def fakes_running(tmp: Path, ports: Sequence[int], cpu: int | None) -> Iterator[list[Started]]:
    """One fake per port, healthy; each stopped on the way out (a killed one is skipped)."""
    with contextlib.ExitStack() as stack:
        fakes = [
            stack.enter_context(running(start_fake(tmp, port, cpu, f"replica-{index}")))
            for index, port in enumerate(ports)
        ]
        for fake, port in zip(fakes, ports, strict=True):
            wait_healthy(fake, port, HEALTH_TIMEOUT_S)
        yield fakes


@contextlib.contextmanager
def router_running(
    tmp: Path,
    name: str,
    backend_ports: Sequence[int],
    cpu: int | None,
    cooldown_s: float | None = None,
) -> Iterator[tuple[Started, int]]:
    """A router serving ``bench`` from ``backend_ports``, healthy; yields it and its port."""
    config = write_openai_config(tmp / f"{name}.yaml", list(backend_ports), cooldown_s)
    port = free_port()
    with running(start_router(tmp, config, port, cpu, name)) as router:
        wait_healthy(router, port, HEALTH_TIMEOUT_S)
        yield router, port


def off_even(counts: Sequence[int]) -> float:
    """The largest distance of one replica's count from an even share, as a fraction of it."""
    total = sum(counts)
    if not counts or total == 0:
        return float("nan")
    even = total / len(counts)
    return max(abs(count - even) for count in counts) / even


@dataclass(frozen=True)
class ReplicaRun:
    """One wrk run through a router in front of ``len(counts)`` fakes."""

    wrk: WrkRun
    cpu_us: float  # the router's CPU per request
    counts: tuple[int, ...]  # chat requests each fake received during the run

    @property
    def off_even(self) -> float:
        return off_even(self.counts)


def load_replicas(
    router: Started,
    router_port: int,
    backend_ports: Sequence[int],
    connections: int,
    duration_s: float,
    cpu: int | None,
) -> ReplicaRun:
    url = f"http://{HOST}:{router_port}{CHAT_PATH}"
    before = [served(port).requests for port in backend_ports]
    cpu_before = cpu_s(router)
    run = run_wrk(url, connections, duration_s, cpu)
    cpu_us = (cpu_s(router) - cpu_before) / max(run.requests, 1) * 1e6
    after = [served(port).requests for port in backend_ports]
    counts = tuple(a - b for a, b in zip(after, before, strict=True))
    return ReplicaRun(run, cpu_us, counts)


def measure_replicas(
    tmp: Path,
    replicas: int,
    connections: int,
    repeats: int,
    duration_s: float,
    proxy_cpu: int | None,
    load_cpu: int | None,
    progress: Callable[[str], None],
) -> dict[int, list[ReplicaRun]]:
    """wrk through a router with one ``base_url`` and one with ``replicas`` ``base_urls``.

    Both routers run side by side (one idle while the other is loaded) and the
    repetitions alternate between them, so drift in the machine's load touches both.
    The one-upstream router uses the first fake. Keyed by the number of upstreams.
    """
    ports = [free_port() for _ in range(replicas)]
    groups = sorted({1, replicas})
    runs: dict[int, list[ReplicaRun]] = {size: [] for size in groups}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fakes_running(tmp, ports, load_cpu))
        routers: dict[int, tuple[Started, int]] = {}
        for size in groups:
            name = f"router-{size}-upstreams"
            router, port = stack.enter_context(router_running(tmp, name, ports[:size], proxy_cpu))
            # Warm the router's pools to every fake; nothing recorded.
            run_wrk(f"http://{HOST}:{port}{CHAT_PATH}", 16, 1, load_cpu)
            routers[size] = (router, port)
        for repeat in range(repeats):
            for size in groups:
                router, port = routers[size]
                run = load_replicas(router, port, ports[:size], connections, duration_s, load_cpu)
                runs[size].append(run)
                progress(
                    f"replicas {repeat + 1}/{repeats} {size} upstream(s) c={connections}: "
                    f"{run.wrk.rps:,.0f} req/s, p50 {run.wrk.p50_ms:.3f} ms, "
                    f"{run.cpu_us:.0f} CPU us/request, errors {run.wrk.errors}, "
                    f"per replica {' / '.join(f'{n:,}' for n in run.counts)}"
                )
    return runs
