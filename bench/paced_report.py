"""The table's rows for paced streams, with the targets of a proxy at GPU scale."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.paced import LOAD_BUSY_LIMIT
from bench.results import DIRECT, NGINX, ROUTER, TARGETS, Results
from bench.stats import Figure, with_spread
from bench.streams import StreamRun

# Points judged on rate, first chunk and errors: a slow model's pace at many streams.
RATE_POINTS = frozenset({(256, 20.0), (1024, 100.0)})
MIN_RATE_OF_DIRECT = 0.97
MAX_ADDED_TTFC_MS = 1.0
# ... or no more than nginx adds in the same run, plus this.
TTFC_SLACK_OVER_NGINX_MS = 0.5
# Points judged on CPU per chunk, against nginx's in the same run.
CPU_POINTS = frozenset({(64, 5.0), (256, 5.0), (256, 20.0)})
MAX_CPU_OF_NGINX = 2.0
RSS_LIMIT_MB = 200.0


@dataclass(frozen=True)
class Line:
    measure: str
    cells: dict[str, str]
    versus: tuple[str, str] = ("", "")  # nginx, slm_server against direct (or nginx)
    target: str = ""
    ok: bool | None = None
    checked: bool = field(default=False)  # whether the row has a target at all


def _figure(runs: Sequence[StreamRun], value: Callable[[StreamRun], float]) -> Figure:
    return Figure.of(value(run) for run in runs)


def _cpu_us(run: StreamRun) -> float:
    return run.target_cpu_s / max(run.chunks, 1) * 1e6


def _ratio(figure: Figure, base: Figure, suffix: str = "x") -> str:
    if figure.missing or base.missing or not base.median:
        return ""
    return f"{figure.median / base.median:.2f}{suffix}"


def _added(figure: Figure, base: Figure) -> str:
    if figure.missing or base.missing:
        return ""
    return f"{figure.median - base.median:+.2f}"


def _load_note(runs: dict[str, list[StreamRun]]) -> tuple[bool, str]:
    """Whether the load CPU was nearly full in any run of the point, and the busiest."""
    busy = [run.load_busy for target_runs in runs.values() for run in target_runs]
    if not busy:
        return False, ""
    return max(busy) > LOAD_BUSY_LIMIT, f"{max(busy):.0%}"


def paced_lines(results: Results) -> list[Line]:
    lines: list[Line] = []
    for concurrency, gap in results.settings.paced_points:
        runs = {t: results.paced.get((t, concurrency, gap), []) for t in TARGETS}
        if not any(runs.values()):
            continue
        lines += _point_lines(results, concurrency, gap, runs)
    return lines


def _point_lines(
    results: Results, concurrency: int, gap: float, runs: dict[str, list[StreamRun]]
) -> list[Line]:
    label = f"paced c={concurrency} gap={gap:g}ms"
    point = (concurrency, gap)
    saturated, busiest = _load_note(runs)
    # A nearly full load CPU may have slowed the clients, not the proxy: no verdict then.
    unsure = " (load CPU saturated: not judged)" if saturated else ""
    rate = {t: _figure(r, lambda run: run.chunks_per_s) for t, r in runs.items()}
    ttfc = {t: _figure(r, lambda run: run.ttfc_p50_ms) for t, r in runs.items()}
    cpu = {t: _figure(r, _cpu_us) for t, r in runs.items()}
    busy = {t: _figure(r, lambda run: run.load_busy * 100) for t, r in runs.items()}
    batched = {t: _figure(r, lambda run: run.events_per_read) for t, r in runs.items()}
    errors = {t: sum(run.errors for run in r) for t, r in runs.items()}
    complete = all(not f.missing for f in rate.values())
    lines: list[Line] = []
    rate_line = Line(
        f"{label} chunks/s",
        {t: with_spread(f, 0) for t, f in rate.items()},
        (_ratio(rate[NGINX], rate[DIRECT]), _ratio(rate[ROUTER], rate[DIRECT])),
    )
    ttfc_line = Line(
        f"{label} TTFC p50 ms",
        {t: with_spread(f, 2) for t, f in ttfc.items()},
        (_added(ttfc[NGINX], ttfc[DIRECT]), _added(ttfc[ROUTER], ttfc[DIRECT])),
    )
    if point in RATE_POINTS:
        judged = complete and not saturated
        rate_line = Line(
            rate_line.measure,
            rate_line.cells,
            rate_line.versus,
            f">= {MIN_RATE_OF_DIRECT}x direct{unsure}",
            rate[ROUTER].median >= MIN_RATE_OF_DIRECT * rate[DIRECT].median if judged else None,
            checked=True,
        )
        added = ttfc[ROUTER].median - ttfc[DIRECT].median
        nginx_added = ttfc[NGINX].median - ttfc[DIRECT].median
        ttfc_line = Line(
            ttfc_line.measure,
            ttfc_line.cells,
            ttfc_line.versus,
            f"added <= {MAX_ADDED_TTFC_MS:g} ms or <= nginx's + {TTFC_SLACK_OVER_NGINX_MS:g}"
            + unsure,
            (added <= MAX_ADDED_TTFC_MS or added <= nginx_added + TTFC_SLACK_OVER_NGINX_MS)
            if judged
            else None,
            checked=True,
        )
    lines += [rate_line, ttfc_line]
    cpu_target = f"<= {MAX_CPU_OF_NGINX:g}x nginx's" if point in CPU_POINTS else ""
    cpu_ok = None
    if cpu_target and not cpu[ROUTER].missing and not cpu[NGINX].missing:
        cpu_ok = cpu[ROUTER].median <= MAX_CPU_OF_NGINX * cpu[NGINX].median
    lines.append(
        Line(
            f"{label} CPU us/chunk",
            {t: with_spread(f, 1) for t, f in cpu.items()},
            ("", _ratio(cpu[ROUTER], cpu[NGINX], "x nginx")),
            cpu_target,
            cpu_ok,
            checked=bool(cpu_target),
        )
    )
    # Above direct's, events queued in the proxy and went out together: it fell behind,
    # and its CPU per chunk is then lower than it would be keeping pace.
    lines.append(
        Line(
            f"{label} events per client read",
            {t: with_spread(f, 2) for t, f in batched.items()},
        )
    )
    lines.append(
        Line(
            f"{label} errors (all runs)",
            {t: str(n) for t, n in errors.items()},
            target="0 (slm_server)" if point in RATE_POINTS else "",
            ok=errors[ROUTER] == 0 if complete else None,
            checked=point in RATE_POINTS,
        )
    )
    lines.append(
        Line(
            f"{label} load CPU busy %",
            {t: with_spread(f, 0) for t, f in busy.items()},
            target=f"< {LOAD_BUSY_LIMIT:.0%} (busiest {busiest})",
            ok=not saturated,
            checked=True,
        )
    )
    if concurrency == max(c for c, _ in results.settings.paced_points):
        peaks = {
            t: Figure.of(results.paced_rss_mb.get((t, concurrency, gap), []))
            for t in (NGINX, ROUTER)
        }
        router_peak = peaks[ROUTER]
        lines.append(
            Line(
                f"{label} RSS peak MB",
                {t: with_spread(f, 1) for t, f in peaks.items()},
                target=f"< {RSS_LIMIT_MB:g} MB",
                ok=None if router_peak.missing else router_peak.high < RSS_LIMIT_MB,
                checked=True,
            )
        )
    return lines
