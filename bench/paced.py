"""Paced streams: many concurrent streams whose chunks come as a model's tokens do.

A model on a GPU sends each stream's tokens some milliseconds apart; what a proxy costs
then is its CPU per chunk relayed, and whether, with hundreds of streams open, it still
passes each chunk on at once. Each point runs its clients staggered (each starts at its
own random point within one stream's length, or 3 s if shorter) so chunks and requests
arrive spread over time, as a steady load's do, rather than in one burst per gap.

The clients and the backend share the load CPU. At 1024 streams they must still keep
their pace, or the figures measure them rather than the proxy: each run records how
busy they kept that CPU, and the table marks a point where it was nearly full.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import threading
import time
from collections.abc import Callable, Iterator

from bench.procs import Started, cpu_s, rss_mb
from bench.results import DIRECT, TARGETS, Results, Settings
from bench.streams import stream_load

# Past this share of the load CPU busy, the clients and the backend may lag their pace.
LOAD_BUSY_LIMIT = 0.9
_RSS_EVERY_S = 0.1
# Sockets: each stream holds one in the client, up to two in a proxy, one in the backend.
_WANTED_FILES = 65536


def raise_file_limit() -> None:
    """The soft descriptor limit raised toward the hard one: processes started later
    inherit it, and 1024 streams need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _WANTED_FILES if hard == resource.RLIM_INFINITY else min(hard, _WANTED_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_duration_s(settings: Settings, gap_ms: float) -> float:
    """How long a point's clients keep starting streams: long enough for every client to
    have started (the stagger spans one stream's length) and most to stream twice."""
    stream_s = settings.chunks * gap_ms / 1000
    return max(settings.paced_duration_s, 1.5 * stream_s)


def _own_cpu_s() -> float:
    return time.process_time()


@contextlib.contextmanager
def _rss_peak(process: Started | None, peaks: list[float]) -> Iterator[None]:
    """``process``'s RSS sampled every 100 ms on a thread while the block runs; its
    highest reading appended to ``peaks``."""
    if process is None:
        yield
        return
    readings = [rss_mb(process)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(_RSS_EVERY_S):
            readings.append(rss_mb(process))

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        readings.append(rss_mb(process))
        peaks.append(max(readings))


def measure_paced(
    settings: Settings,
    results: Results,
    urls: dict[str, str],
    processes: dict[str, Started],
    progress: Callable[[str], None],
) -> None:
    """Every paced point against every target, repetitions outermost (see _plain)."""
    backend = processes[DIRECT]

    def load_clock() -> float:
        return _own_cpu_s() + cpu_s(backend)

    for repeat in range(settings.repeats):
        for concurrency, gap in settings.paced_points:
            duration = run_duration_s(settings, gap)
            for target in TARGETS:
                key = (target, concurrency, gap)
                process = processes[target]
                peaks: list[float] = []
                with _rss_peak(None if target == DIRECT else process, peaks):
                    run = stream_load(
                        urls[target],
                        concurrency,
                        settings.chunks,
                        gap,
                        duration,
                        functools.partial(cpu_s, process),
                        load_clock=load_clock,
                        staggered=True,
                    )
                results.paced.setdefault(key, []).append(run)
                if peaks:
                    results.paced_rss_mb.setdefault(key, []).append(peaks[0])
                cpu_us = run.target_cpu_s / max(run.chunks, 1) * 1e6
                rss = f", RSS peak {peaks[0]:.1f} MB" if peaks else ""
                progress(
                    f"paced {repeat + 1}/{settings.repeats} c={concurrency} gap={gap:g}ms "
                    f"{target}: {run.chunks_per_s:,.0f} chunks/s, TTFC p50 "
                    f"{run.ttfc_p50_ms:.2f} ms, {cpu_us:.1f} CPU us/chunk, errors "
                    f"{run.errors}, load CPU {run.load_busy:.0%} busy{rss}"
                )
