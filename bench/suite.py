"""The benchmark session: start the targets, load each in turn, collect the figures."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import environment
from bench.cold_start import ColdStart, measure_cold_starts
from bench.metrics_check import check_metrics, counted_now
from bench.nginx import start_nginx
from bench.paced import measure_paced, raise_file_limit
from bench.procs import HOST, Started, cpu_s, free_port, rss_mb, running, spawn, wait_healthy
from bench.readiness import measure_lag
from bench.replica_kill import KillPlan, measure_kill
from bench.replicas import measure_replicas
from bench.results import DIRECT, NGINX, ROUTER, TARGETS, Results, Settings
from bench.router import start_router, write_config
from bench.soak import soak
from bench.streams import plain_sample, stream_load
from bench.uploads import upload_load
from bench.wrk import run_wrk

_HEALTH_TIMEOUT_S = 30
_CHAT = "/v1/chat/completions"


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_suite(settings: Settings) -> Results:
    results = Results(settings, environment.describe(settings))
    # The harness itself (stream client, samplers) is a load generator: it gets their CPU.
    if settings.load_cpu is not None:
        os.sched_setaffinity(0, {settings.load_cpu})
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            if not settings.only:
                with _targets(tmp, settings, results) as (ports, processes):
                    _measure(settings, results, ports, processes)
                    _soak(settings, results, ports, processes)
            elif "streams-paced" in settings.only:
                with _targets(tmp, settings, results, timings=False) as (ports, processes):
                    _paced(settings, ports, results, processes)
            if "cold-start" in settings.only:
                results.cold_starts = _cold_starts(tmp, settings)
            if "soak" in settings.only:
                with _router_only(tmp, settings) as (ports, processes):
                    _soak(settings, results, ports, processes)
            if settings.runs("replicas"):
                _replicas(tmp, settings, results)
            if settings.runs("replica-kill"):
                _replica_kills(tmp, settings, results)
        except Exception:
            _print_logs(tmp)
            raise
    return results


@contextlib.contextmanager
def _targets(
    tmp: Path, settings: Settings, results: Results, timings: bool = True
) -> Iterator[tuple[dict[str, int], dict[str, Started]]]:
    """Backend, nginx and router up and healthy, by target name; all stopped on the way out.

    ``timings``: the start-up, readiness and cold-start figures are taken on the way."""
    ports = {target: free_port() for target in TARGETS}
    backend_cmd = [sys.executable, "-m", "bench.backend", "--port", str(ports[DIRECT])]
    backend = spawn("backend", [*backend_cmd, "--chunks", str(settings.chunks)], tmp,
                    settings.load_cpu)  # fmt: skip
    with running(backend):
        wait_healthy(backend, ports[DIRECT], _HEALTH_TIMEOUT_S)
        config = write_config(tmp, ports[DIRECT])
        nginx = start_nginx(tmp, ports[NGINX], ports[DIRECT], settings.proxy_cpu)
        with running(nginx):
            wait_healthy(nginx, ports[NGINX], _HEALTH_TIMEOUT_S)
            if timings:
                results.startup_s = _startups(tmp, config, settings)
                results.readiness_lag_s = _readiness_lags(tmp, settings)
                results.cold_starts = _cold_starts(tmp, settings)
            router = start_router(tmp, config, ports[ROUTER], settings.proxy_cpu, "router")
            with running(router):
                wait_healthy(router, ports[ROUTER], _HEALTH_TIMEOUT_S)
                proxies = {NGINX: nginx, ROUTER: router}
                # Idle: up and healthy, no model request served yet.
                results.rss_idle_mb = {name: rss_mb(p) for name, p in proxies.items()}
                yield ports, {DIRECT: backend, **proxies}
                results.rss_after_mb = {name: rss_mb(p) for name, p in proxies.items()}


@contextlib.contextmanager
def _router_only(
    tmp: Path, settings: Settings
) -> Iterator[tuple[dict[str, int], dict[str, Started]]]:
    """Backend and router only (``--only soak``): no nginx, no start-up timings."""
    ports = {DIRECT: free_port(), ROUTER: free_port()}
    backend_cmd = [sys.executable, "-m", "bench.backend", "--port", str(ports[DIRECT])]
    backend = spawn("backend", [*backend_cmd, "--chunks", str(settings.chunks)], tmp,
                    settings.load_cpu)  # fmt: skip
    with running(backend):
        wait_healthy(backend, ports[DIRECT], _HEALTH_TIMEOUT_S)
        config = write_config(tmp, ports[DIRECT])
        router = start_router(tmp, config, ports[ROUTER], settings.proxy_cpu, "router")
        with running(router):
            wait_healthy(router, ports[ROUTER], _HEALTH_TIMEOUT_S)
            yield ports, {DIRECT: backend, ROUTER: router}


def _startups(tmp: Path, config: Path, settings: Settings) -> list[float]:
    """Spawn-to-first-200-on-/health of fresh routers, each stopped again."""
    times = []
    for index in range(settings.startups):
        port = free_port()
        router = start_router(tmp, config, port, settings.proxy_cpu, f"router-startup-{index}")
        with running(router):
            # Timed from Popen's return: fork+exec before it take microseconds.
            times.append(wait_healthy(router, port, _HEALTH_TIMEOUT_S))
        progress(f"router start-up {index + 1}/{settings.startups}: {times[-1]:.3f} s")
    return times


def _readiness_lags(tmp: Path, settings: Settings) -> list[float]:
    lags = []
    for index in range(settings.startups):
        lags.append(measure_lag(tmp, settings.proxy_cpu))
        progress(f"readiness lag {index + 1}/{settings.startups}: {lags[-1] * 1000:.1f} ms")
    return lags


def _cold_starts(tmp: Path, settings: Settings) -> list[ColdStart]:
    if settings.cold_starts <= 0:
        return []
    progress(f"cold start: {settings.cold_starts} requests for an unloaded model through serve")
    starts = measure_cold_starts(tmp, settings.proxy_cpu, settings.cold_starts)
    for index, start in enumerate(starts):
        progress(
            f"cold start {index + 1}/{len(starts)}: router's part {start.router_s * 1000:.1f} ms "
            f"(to spawn {start.to_spawn_s * 1000:.1f}, readiness seen to first byte "
            f"{start.to_first_byte_s * 1000:.1f}) of {start.total_s * 1000:.1f} ms in all"
        )
    return starts


def _measure(
    settings: Settings, results: Results, ports: dict[str, int], processes: dict[str, Started]
) -> None:
    urls = {target: f"http://{HOST}:{port}{_CHAT}" for target, port in ports.items()}
    for target in TARGETS:  # warm pools and caches; nothing recorded
        run_wrk(urls[target], 16, 1, settings.load_cpu)
    metrics_url = f"http://{HOST}:{ports[ROUTER]}"
    counted_before = counted_now(metrics_url)
    _plain(settings, results, urls, processes)
    counted = counted_now(metrics_url) - counted_before
    for concurrency in (1, 64):
        progress(f"overhead header sample, {concurrency} connection(s)")
        results.overhead[concurrency] = plain_sample(
            urls[ROUTER], concurrency, settings.sample_duration_s
        )
    _streams(settings, results, urls, processes)
    _paced(settings, ports, results, processes)
    _uploads(settings, results, urls[ROUTER], processes[ROUTER])
    _metrics(results, metrics_url, counted)


def _paced(
    settings: Settings, ports: dict[str, int], results: Results, processes: dict[str, Started]
) -> None:
    urls = {target: f"http://{HOST}:{port}{_CHAT}" for target, port in ports.items()}
    points = ", ".join(f"c={c} gap={g:g}ms" for c, g in settings.paced_points)
    progress(f"paced streams: {points}")
    measure_paced(settings, results, urls, processes, progress)


def _metrics(results: Results, base_url: str, counted: int) -> None:
    """The router's /metrics after the load: how long a scrape takes, and whether the
    answers of the plain runs (``counted`` by the router) are those wrk read."""
    router_runs = [
        (connections, run)
        for (target, connections), runs in results.plain.items()
        if target == ROUTER
        for run in runs
    ]
    # wrk's requests include its non-2xx answers (status errors), not its socket errors.
    answered = sum(run.requests - run.status_errors for _, run in router_runs)
    dropped_at_most = sum(connections for connections, _ in router_runs)
    check = results.metrics = check_metrics(base_url, counted, answered, dropped_at_most)
    progress(
        f"metrics: scrape {check.scrape_ms:.1f} ms; {check.counted:,} chat answers counted, "
        f"{check.answered:,} read by wrk (up to {dropped_at_most:,} more sent as runs stopped)"
    )


def _uploads(settings: Settings, results: Results, url: str, router: Started) -> None:
    """Concurrent large uploads through the router alone: its memory is what is measured."""
    concurrency, size_mb = settings.uploads, settings.upload_mb
    progress(f"uploads: {concurrency} x {size_mb:g} MiB at once")
    run = upload_load(url, concurrency, size_mb, functools.partial(rss_mb, router))
    results.uploads = run
    progress(
        f"uploads: {run.uploads} answered, {run.refused} refused and retried, "
        f"errors {run.errors}, peak RSS {run.peak_rss_mb:.1f} MB in {run.elapsed_s:.2f} s"
    )


def _plain(
    settings: Settings, results: Results, urls: dict[str, str], processes: dict[str, Started]
) -> None:
    # Repetition is the outer loop so slow drift (other load on the machine)
    # touches every target alike instead of whichever ran last.
    for repeat in range(settings.repeats):
        for connections in settings.connections:
            for target in TARGETS:
                process = processes[target]
                peaks: list[float] = []
                sample = None
                if target != DIRECT and connections == settings.rss_connections:
                    sample = _rss_sampler(process, peaks)
                cpu_before = cpu_s(process)
                run = run_wrk(
                    urls[target], connections, settings.duration_s, settings.load_cpu, sample
                )
                cpu_us = (cpu_s(process) - cpu_before) / max(run.requests, 1) * 1e6
                results.plain.setdefault((target, connections), []).append(run)
                results.plain_cpu_us.setdefault((target, connections), []).append(cpu_us)
                if peaks:
                    results.rss_load_mb.setdefault(target, []).append(max(peaks))
                progress(
                    f"plain {repeat + 1}/{settings.repeats} c={connections} {target}: "
                    f"{run.rps:,.0f} req/s, p50 {run.p50_ms:.3f} ms, "
                    f"{cpu_us:.0f} CPU us/request, errors {run.errors}"
                )


def _rss_sampler(process: Started, peaks: list[float]) -> Callable[[], None]:
    def sample() -> None:
        peaks.append(rss_mb(process))

    return sample


def _streams(
    settings: Settings, results: Results, urls: dict[str, str], processes: dict[str, Started]
) -> None:
    for repeat in range(settings.repeats):
        for gap in settings.gaps_ms:
            for concurrency in settings.stream_concurrency:
                for target in TARGETS:
                    key = (target, concurrency, gap)
                    process = processes[target]
                    run = stream_load(
                        urls[target],
                        concurrency,
                        settings.chunks,
                        gap,
                        settings.stream_duration_s,
                        functools.partial(cpu_s, process),
                    )
                    cpu_us = run.target_cpu_s / max(run.chunks, 1) * 1e6
                    results.streams.setdefault(key, []).append(run)
                    results.stream_cpu_us.setdefault(key, []).append(cpu_us)
                    progress(
                        f"stream {repeat + 1}/{settings.repeats} c={concurrency} gap={gap:g}ms "
                        f"{target}: {run.chunks_per_s:,.0f} chunks/s, "
                        f"TTFC p50 {run.ttfc_p50_ms:.2f} ms, {cpu_us:.1f} CPU us/chunk, "
                        f"errors {run.errors}"
                    )


def _soak(
    settings: Settings, results: Results, ports: dict[str, int], processes: dict[str, Started]
) -> None:
    if settings.soak_requests <= 0:
        return
    router = processes[ROUTER]
    progress(
        f"soak: {settings.soak_requests:,} mixed requests at c={settings.soak_connections} "
        f"(stops after {settings.soak_deadline_s:g} s, finished or not)"
    )
    run = soak(
        f"http://{HOST}:{ports[ROUTER]}",
        settings.soak_requests,
        settings.soak_connections,
        settings.soak_deadline_s,
        router.pid,
        ports[DIRECT],
        functools.partial(rss_mb, router),
    )
    results.soak = run
    progress(
        f"soak: {run.requests:,} requests in {run.elapsed_s:.1f} s ({run.rate:,.0f}/s), "
        f"errors {run.errors} {run.error_kinds or ''}, RSS {run.rss_mark_mb:.1f} MB after "
        f"{run.mark:,} -> {run.rss_end_mb:.1f} MB, fds {run.fds_before} -> {run.fds_after}"
    )
    if run.first_error:
        progress(f"soak: first error: {run.first_error}")


def _replicas(tmp: Path, settings: Settings, results: Results) -> None:
    progress(
        f"replicas: {settings.replicas} fake backend(s) behind one base_urls entry, and "
        f"one behind base_url, c={settings.replica_connections}"
    )
    results.replicas = measure_replicas(
        tmp,
        settings.replicas,
        settings.replica_connections,
        settings.repeats,
        settings.duration_s,
        settings.proxy_cpu,
        settings.load_cpu,
        progress,
    )


def _replica_kills(tmp: Path, settings: Settings, results: Results) -> None:
    plan = KillPlan(settings.kill_connections, cooldown_s=settings.replica_cooldown_s)
    for repeat in range(settings.repeats):
        progress(
            f"replica-kill {repeat + 1}/{settings.repeats}: c={plan.connections} for "
            f"{plan.duration_s:g} s, replica {settings.replicas - 1} killed at "
            f"{plan.kill_at_s:g} s and started again at {plan.restart_at_s:g} s"
        )
        run = measure_kill(tmp, plan, settings.replicas, settings.proxy_cpu, settings.load_cpu)
        results.replica_kills.append(run)
        progress(
            f"replica-kill {repeat + 1}/{settings.repeats}: {run.requests:,} requests, failed "
            f"{run.failed_after_kill} sent after the kill, {run.failed_in_flight} in flight, "
            f"{run.failed_before_kill} before; killed at {run.killed_at_s:.3f} s, started again "
            f"at {run.restarted_at_s:.3f} s; it got {run.killed_before:,} before, "
            f"{run.killed_after:,} after its restart; listening "
            f"{run.restart_to_listening_s * 1000:.0f} ms after it, its first request "
            f"{run.recovery_s:.3f} s after that; x-slm-upstream seen: {run.upstreams}"
        )
        if run.first_error:
            progress(f"replica-kill: first failure at {run.first_error}")


def _print_logs(tmp: Path) -> None:
    for log in sorted(tmp.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        if tail:
            print(f"--- {log.name}", *tail, sep="\n", file=sys.stderr)
