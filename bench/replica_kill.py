"""One replica killed under load, then started again: what clients see, and when it is back.

The client (aiohttp, one record per request: when it was sent, when its answer
ended, whether it was a whole 200 chat answer) keeps ``connections`` requests in
flight. At ``kill_at_s`` one replica is killed with SIGKILL (its count of chat
requests read just before); at ``restart_at_s`` it is started again on the same
port. The router should retry what the dead replica refused and leave it out until
its cooldown has run out and one probe request finds it answering again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

from bench.procs import HOST, Started, free_port, wait_healthy
from bench.replicas import (
    CHAT_PATH,
    HEALTH_TIMEOUT_S,
    fakes_running,
    router_running,
    served,
    start_fake,
)
from bench.router import AUTH_HEADERS, MODEL_ID

UPSTREAM_HEADER = "x-slm-upstream"
_JSON = {"content-type": "application/json", **AUTH_HEADERS}
_BODY = json.dumps(
    {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
).encode()
_MARK = b'"chat.completion"'
_REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class KillPlan:
    connections: int = 32
    kill_at_s: float = 2.0
    restart_at_s: float = 4.0
    cooldown_s: float = 2.0  # the router's, set in the config it runs with

    @property
    def duration_s(self) -> float:
        # A probe due while the replica is still down cools it for another cooldown_s:
        # the load lasts until well after the probe that follows.
        return self.restart_at_s + 2 * self.cooldown_s + 1.0


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as the client saw it; times are time.monotonic()."""

    started: float
    ended: float
    ok: bool


@dataclass(frozen=True)
class Tally:
    """Failed requests, by when they were sent against the moment of the kill."""

    sent: int
    failed_after_kill: int  # sent once the replica was dead: nothing of theirs had started
    failed_in_flight: int  # sent before the kill, answer ended after it
    failed_before_kill: int


def tally(records: Sequence[Sent], killed_at: float) -> Tally:
    after = in_flight = before = 0
    for record in records:
        if record.ok:
            continue
        if record.started >= killed_at:
            after += 1
        elif record.ended >= killed_at:
            in_flight += 1
        else:
            before += 1
    return Tally(len(records), after, in_flight, before)


@dataclass
class KillRun:
    connections: int
    replicas: int
    cooldown_s: float
    requests: int = 0
    elapsed_s: float = 0.0
    failed_after_kill: int = 0
    failed_in_flight: int = 0
    failed_before_kill: int = 0
    first_error: str = ""
    # When the replica was killed and started again, from the first request sent.
    killed_at_s: float = float("nan")
    restarted_at_s: float = float("nan")
    killed_before: int = 0  # chat requests the killed replica received before it died
    killed_after: int = 0  # ... and once started again
    restart_to_listening_s: float = float("nan")
    # Listening again to the first chat request reaching it; NaN: none did.
    recovery_s: float = float("nan")
    upstreams: dict[str, int] = field(default_factory=dict)  # x-slm-upstream values seen

    @property
    def named_killed(self) -> int:
        """Answers whose x-slm-upstream (``<role>/<replica>``) names the killed replica."""
        suffix = f"/{self.replicas - 1}"
        return sum(n for upstream, n in self.upstreams.items() if upstream.endswith(suffix))


@dataclass
class _Timeline:
    killed_at: float = float("nan")
    restarted_at: float = float("nan")
    listening_at: float = float("nan")
    killed_before: int = 0


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[bool, str, str]:
    """(whole 200 chat answer, x-slm-upstream, what went wrong)."""
    try:
        async with session.post(url, data=_BODY, headers=_JSON) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, "", repr(exc)
    upstream = response.headers.get(UPSTREAM_HEADER, "")
    if response.status == 200 and _MARK in body:
        return True, upstream, ""
    return False, upstream, f"status {response.status}: {body[:200]!r}"


def _listening_at(fake: Started, port: int) -> float:
    wait_healthy(fake, port, HEALTH_TIMEOUT_S)
    return time.monotonic()


async def _kill_run(
    url: str,
    plan: KillPlan,
    run: KillRun,
    victim: Started,
    victim_port: int,
    restart: Callable[[], Started],
) -> None:
    loop = asyncio.get_running_loop()
    records: list[Sent] = []
    upstreams: Counter[str] = Counter()
    begin = time.monotonic()
    stop_at = begin + plan.duration_s
    times = _Timeline()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=plan.connections),
        timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S),
    )

    async def worker() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            ok, upstream, error = await _post(session, url)
            records.append(Sent(started, time.monotonic(), ok))
            upstreams[upstream] += 1
            if error and not run.first_error:
                run.first_error = f"{started - begin:.3f} s: {error}"

    async def timeline() -> None:
        await asyncio.sleep(begin + plan.kill_at_s - time.monotonic())
        times.killed_before = served(victim_port).requests
        os.kill(victim.pid, signal.SIGKILL)
        times.killed_at = time.monotonic()
        await loop.run_in_executor(None, victim.process.wait)
        await asyncio.sleep(begin + plan.restart_at_s - time.monotonic())
        times.restarted_at = time.monotonic()
        fake = restart()
        times.listening_at = await loop.run_in_executor(None, _listening_at, fake, victim_port)

    async with session:
        workers = [asyncio.ensure_future(worker()) for _ in range(plan.connections)]
        await timeline()
        await asyncio.gather(*workers)
    run.elapsed_s = time.monotonic() - begin
    counts = tally(records, times.killed_at)
    run.requests = counts.sent
    run.failed_after_kill = counts.failed_after_kill
    run.failed_in_flight = counts.failed_in_flight
    run.failed_before_kill = counts.failed_before_kill
    run.upstreams = dict(upstreams)
    run.killed_at_s = times.killed_at - begin
    run.restarted_at_s = times.restarted_at - begin
    run.killed_before = times.killed_before
    run.restart_to_listening_s = times.listening_at - times.restarted_at
    back = served(victim_port)
    run.killed_after = back.requests
    if back.first_at is not None:
        run.recovery_s = back.first_at - times.listening_at


def measure_kill(
    tmp: Path, plan: KillPlan, replicas: int, proxy_cpu: int | None, load_cpu: int | None
) -> KillRun:
    """Fresh fakes and router, one kill-and-restart run under load, everything stopped after.

    The last replica is the one killed (`KillRun.named_killed` relies on it). With one
    replica there is nowhere to retry: the run then shows what the client sees without
    replicas.
    """
    ports = [free_port() for _ in range(replicas)]
    victim_index = replicas - 1
    cooldown_s = plan.cooldown_s if replicas > 1 else None
    run = KillRun(plan.connections, replicas, plan.cooldown_s)
    with contextlib.ExitStack() as stack:
        fakes = stack.enter_context(fakes_running(tmp, ports, load_cpu))
        _, router_port = stack.enter_context(
            router_running(tmp, "router-replica-kill", ports, proxy_cpu, cooldown_s)
        )

        def restart() -> Started:
            name = f"replica-{victim_index}-restarted"
            fake = start_fake(tmp, ports[victim_index], load_cpu, name)
            stack.callback(fake.stop)
            return fake

        url = f"http://{HOST}:{router_port}{CHAT_PATH}"
        uvloop.run(_kill_run(url, plan, run, fakes[victim_index], ports[victim_index], restart))
    return run
