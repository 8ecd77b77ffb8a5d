"""The one table: every figure side by side, with the issue's targets checked."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.cold_start import ColdStart
from bench.environment import load_average
from bench.paced_report import paced_lines
from bench.replica_kill import KillPlan
from bench.replica_report import kill_lines, replica_lines
from bench.results import DIRECT, NGINX, ROUTER, TARGETS, Results, Settings
from bench.stats import Figure, with_spread
from bench.streams import StreamRun
from bench.wrk import WrkRun

# ratio: a rate, higher is better; added: a time, direct's subtracted; none: not comparable.
Comparison = Literal["ratio", "added", "none"]

_COLUMNS = ("measure", DIRECT, NGINX, ROUTER, "nginx vs direct", "slm vs direct", "target", "")


@dataclass(frozen=True)
class Row:
    measure: str
    cells: dict[str, str]  # by target
    versus: tuple[str, str] = ("", "")  # nginx, slm_server compared with direct
    target: str = ""
    check: str = ""


def _passed(ok: bool | None) -> str:
    if ok is None:
        return "-"
    return "PASS" if ok else "MISS"


class _Rows:
    """Builds rows from per-target figures; ``kind`` says how targets compare with direct."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(
        self,
        measure: str,
        figures: dict[str, Figure],
        digits: int,
        kind: Comparison,
        target: str = "",
        check: Callable[[dict[str, Figure]], bool] | None = None,
    ) -> None:
        cells = {t: with_spread(f, digits) for t, f in figures.items()}
        versus = (_versus(figures, NGINX, kind, digits), _versus(figures, ROUTER, kind, digits))
        ok = None
        if check is not None and all(not f.missing for f in figures.values()):
            ok = check(figures)
        self.rows.append(Row(measure, cells, versus, target, _passed(ok) if target else ""))

    def add_plain(
        self, measure: str, cells: dict[str, str], target: str = "", ok: bool | None = None
    ) -> None:
        self.rows.append(Row(measure, cells, ("", ""), target, _passed(ok) if target else ""))


def _versus(figures: dict[str, Figure], target: str, kind: Comparison, digits: int) -> str:
    """How ``target`` compares with direct: "0.91x" for rates, "+0.21" for added times."""
    base, other = figures.get(DIRECT), figures.get(target)
    if kind == "none" or base is None or other is None or base.missing or other.missing:
        return ""
    if kind == "ratio":
        return f"{other.median / base.median:.2f}x" if base.median else ""
    return f"{other.median - base.median:+.{digits}f}"


def _median_of(runs: Sequence[WrkRun] | Sequence[StreamRun], value: Callable[..., float]) -> Figure:
    return Figure.of(value(run) for run in runs)


def _plain_rows(results: Results, rows: _Rows) -> None:
    for connections in results.settings.connections:
        runs = {t: results.plain.get((t, connections), []) for t in TARGETS}
        rps = {t: _median_of(r, lambda run: run.rps) for t, r in runs.items()}
        p50 = {t: _median_of(r, lambda run: run.p50_ms) for t, r in runs.items()}
        p99 = {t: _median_of(r, lambda run: run.p99_ms) for t, r in runs.items()}
        label = f"plain c={connections}"
        if connections == 64:
            rows.add(
                f"{label} req/s",
                rps,
                0,
                "ratio",
                ">= 5,000 req/s",
                lambda f: f[ROUTER].median >= 5000,
            )
        else:
            rows.add(f"{label} req/s", rps, 0, "ratio")
        if connections == 1:
            rows.add(
                f"{label} p50 ms",
                p50,
                3,
                "added",
                "added p50 <= 0.3 ms",
                lambda f: f[ROUTER].median - f[DIRECT].median <= 0.3,
            )
        else:
            rows.add(f"{label} p50 ms", p50, 3, "added")
        rows.add(f"{label} p99 ms", p99, 3, "added")
        cpu = {t: Figure.of(results.plain_cpu_us.get((t, connections), [])) for t in TARGETS}
        rows.add(f"{label} CPU us/request", cpu, 0, "none")
    errors = {
        t: sum(run.errors for (t2, _), runs in results.plain.items() if t2 == t for run in runs)
        for t in TARGETS
    }
    rows.add_plain(
        "plain non-2xx + socket errors (all runs)",
        {t: str(n) for t, n in errors.items()},
        "0 (slm_server)",
        errors[ROUTER] == 0,
    )


def _stream_rows(results: Results, rows: _Rows) -> None:
    settings = results.settings
    for gap in settings.gaps_ms:
        for concurrency in settings.stream_concurrency:
            runs = {t: results.streams.get((t, concurrency, gap), []) for t in TARGETS}
            rate = {t: _median_of(r, lambda run: run.chunks_per_s) for t, r in runs.items()}
            ttfc = {t: _median_of(r, lambda run: run.ttfc_p50_ms) for t, r in runs.items()}
            total = {t: _median_of(r, lambda run: run.stream_p50_ms) for t, r in runs.items()}
            label = f"stream c={concurrency} gap={gap:g}ms"
            if gap == 5 and concurrency == 64:
                rows.add(
                    f"{label} chunks/s",
                    rate,
                    0,
                    "ratio",
                    ">= 0.95x direct",
                    lambda f: f[ROUTER].median >= 0.95 * f[DIRECT].median,
                )
                rows.add(
                    f"{label} TTFC p50 ms",
                    ttfc,
                    2,
                    "added",
                    "added <= 1 ms",
                    lambda f: f[ROUTER].median - f[DIRECT].median <= 1.0,
                )
            elif gap == 0 and concurrency == 16:
                rows.add(
                    f"{label} chunks/s",
                    rate,
                    0,
                    "ratio",
                    ">= 0.6x direct",
                    lambda f: f[ROUTER].median >= 0.6 * f[DIRECT].median,
                )
                rows.add(f"{label} TTFC p50 ms", ttfc, 2, "added")
            else:
                rows.add(f"{label} chunks/s", rate, 0, "ratio")
                rows.add(f"{label} TTFC p50 ms", ttfc, 2, "added")
            rows.add(f"{label} stream time p50 ms", total, 1, "added")
            if gap == 0:
                cpu = {t: Figure.of(results.stream_cpu_us.get((t, concurrency, gap), []))
                       for t in TARGETS}  # fmt: skip
                rows.add(f"{label} CPU us/chunk", cpu, 1, "none")
    errors = {
        t: sum(
            run.errors for (t2, _, _), runs in results.streams.items() if t2 == t for run in runs
        )
        for t in TARGETS
    }
    rows.add_plain(
        "stream errors (all runs)",
        {t: str(n) for t, n in errors.items()},
        "0 (slm_server)",
        errors[ROUTER] == 0,
    )


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _process_rows(results: Results, rows: _Rows) -> None:
    settings = results.settings
    rows.add_plain(
        "RSS idle MB",
        {NGINX: _mb(results.rss_idle_mb.get(NGINX)), ROUTER: _mb(results.rss_idle_mb.get(ROUTER))},
    )
    peaks = {t: Figure.of(results.rss_load_mb.get(t, [])) for t in (NGINX, ROUTER)}
    router_peak = peaks[ROUTER]
    rows.add_plain(
        f"RSS peak at c={settings.rss_connections} MB",
        {t: with_spread(f, 1) for t, f in peaks.items()},
        "< 120 MB",
        None if router_peak.missing else router_peak.high < 120,
    )
    rows.add_plain(
        "RSS after all load MB",
        {
            NGINX: _mb(results.rss_after_mb.get(NGINX)),
            ROUTER: _mb(results.rss_after_mb.get(ROUTER)),
        },
    )
    startup = Figure.of(results.startup_s)
    rows.add_plain(
        "start-up to first 200 /health s",
        {ROUTER: with_spread(startup, 3)},
        "< 1.5 s",
        None if startup.missing else startup.median < 1.5,
    )
    for concurrency, sample in sorted(results.overhead.items()):
        rows.add_plain(
            f"x-slm-overhead-ms p50, plain c={concurrency}",
            {ROUTER: _overhead_cell(sample.overhead_ms, len(sample.latency_ms))},
        )
    stream_overhead = [
        value
        for (target, concurrency, gap), runs in results.streams.items()
        if target == ROUTER and concurrency == 64 and gap == 5
        for run in runs
        for value in run.overhead_ms
    ]
    streamed = sum(
        run.streams
        for (t, c, g), runs in results.streams.items()
        if t == ROUTER and c == 64 and g == 5
        for run in runs
    )
    rows.add_plain(
        "x-slm-overhead-ms p50, stream c=64 gap=5ms",
        {ROUTER: _overhead_cell(stream_overhead, streamed)},
    )
    _upload_rows(results, rows)
    _metrics_rows(results, rows)
    lag_ms = Figure.of([lag * 1000 for lag in results.readiness_lag_s])
    rows.add_plain(
        "readiness lag (serve) ms",
        {ROUTER: with_spread(lag_ms, 1)},
        "< 100 ms",
        None if lag_ms.missing else lag_ms.median < 100,
    )
    _cold_start_rows(results, rows)


def _cold_start_rows(results: Results, rows: _Rows) -> None:
    starts = results.cold_starts

    def ms(value: Callable[[ColdStart], float]) -> str:
        return with_spread(Figure.of(value(start) * 1000 for start in starts), 1)

    router = Figure.of(start.router_s * 1000 for start in starts)
    rows.add_plain(
        "cold start (serve): router's part ms",
        {ROUTER: with_spread(router, 1)},
        "< 50 ms",
        None if router.missing else router.median < 50,
    )
    rows.add_plain("cold start: request to spawn ms", {ROUTER: ms(lambda s: s.to_spawn_s)})
    rows.add_plain(
        "cold start: readiness seen to first byte ms",
        {ROUTER: ms(lambda s: s.to_first_byte_s)},
    )
    rows.add_plain(
        "cold start: backend listening to readiness seen ms",
        {ROUTER: ms(lambda s: s.poll_wait_s)},
    )
    rows.add_plain("cold start: request to first byte ms", {ROUTER: ms(lambda s: s.total_s)})


def _upload_rows(results: Results, rows: _Rows) -> None:
    run, settings = results.uploads, results.settings
    label = f"uploads {settings.uploads}x{settings.upload_mb:g}MB"
    peak = None if run is None or not run.rss_mb else run.peak_rss_mb
    rows.add_plain(
        f"{label} RSS peak MB",
        {ROUTER: _mb(peak)},
        "< 200 MB",
        None if peak is None else peak < 200,
    )
    rows.add_plain(
        f"{label} answered / 503 retried / errors",
        {ROUTER: "-" if run is None else f"{run.uploads} / {run.refused} / {run.errors}"},
        f"{settings.uploads} / any / 0",
        None if run is None else run.uploads == settings.uploads and run.errors == 0,
    )


def _metrics_rows(results: Results, rows: _Rows) -> None:
    check = results.metrics
    rows.add_plain(
        "/metrics scrape after all load ms",
        {ROUTER: "-" if check is None else f"{check.scrape_ms:.1f}"},
        "< 100 ms",
        None if check is None else check.scrape_ms < 100,
    )
    rows.add_plain(
        "/metrics chat 2xx counted / answered",
        {ROUTER: "-" if check is None else f"{check.counted:,} / {check.answered:,}"},
        "answered + 0..dropped",
        None if check is None else check.complete,
    )


def _soak_rows(results: Results, rows: _Rows) -> None:
    run = results.soak
    if run is None:
        return
    label = f"soak {run.planned:,} mixed at c={run.connections}"
    done = f"{run.requests:,} in {run.elapsed_s:.0f} s ({run.rate:,.0f}/s)"
    if run.timed_out:
        done += f", stopped at the {results.settings.soak_deadline_s:g} s deadline"
    rows.add_plain(f"{label}: requests done", {ROUTER: done}, "all", run.complete)
    rows.add_plain(
        f"{label}: wrong answers + socket errors",
        {ROUTER: str(run.errors)},
        "0",
        run.errors == 0,
    )
    growth_ok = None if math.isnan(run.rss_growth) else run.complete and run.rss_growth <= 0.10
    rows.add_plain(
        f"{label}: RSS after {run.mark:,} -> end MB",
        {ROUTER: f"{run.rss_mark_mb:.1f} -> {run.rss_end_mb:.1f} ({run.rss_growth:+.1%})"},
        "end <= +10%",
        growth_ok,
    )
    before, after = run.fds_before, run.fds_after
    if before is None or after is None:
        return
    rows.add_plain(
        f"{label}: open fds before -> after",
        {
            ROUTER: f"{before.own} -> {after.own} "
            f"(+ pooled to backend: {before.pooled} -> {after.pooled})"
        },
        f"same, pool <= {run.connections}",
        after.own <= before.own and after.pooled <= run.connections,
    )


def _overhead_cell(values: list[float], responses: int) -> str:
    if not responses:
        return "-"
    if not values:
        return "header not sent"
    return f"{statistics.median(values):.3f} (n={len(values)})"


def _replicas_header(settings: Settings) -> str:
    plan = KillPlan(settings.kill_connections, cooldown_s=settings.replica_cooldown_s)
    return (
        f"replicas: {settings.replicas} fake backend(s) behind one `backend: openai` entry "
        f"(base_urls; base_url for one), the router pinned apart from them and the load; "
        f"median [min-max] of "
        f"{settings.repeats} run(s) of {settings.duration_s:g} s at "
        f"c={settings.replica_connections}; replica-kill: c={plan.connections} for "
        f"{plan.duration_s:g} s, one replica killed (SIGKILL) at {plan.kill_at_s:g} s and "
        f"started again at {plan.restart_at_s:g} s, router cooldown_s {plan.cooldown_s:g}"
    )


def render(results: Results) -> str:
    rows = _Rows()
    settings = results.settings
    if not settings.only:
        _plain_rows(results, rows)
        _stream_rows(results, rows)
        _process_rows(results, rows)
    elif "cold-start" in settings.only:
        _cold_start_rows(results, rows)
    for paced in paced_lines(results):
        rows.rows.append(
            Row(
                paced.measure,
                paced.cells,
                paced.versus,
                paced.target,
                _passed(paced.ok) if paced.checked else "",
            )
        )
    _soak_rows(results, rows)
    for replica_line in [*replica_lines(results), *kill_lines(results)]:
        rows.add_plain(
            replica_line.measure, {ROUTER: replica_line.cell}, replica_line.target, replica_line.ok
        )
    table = [list(_COLUMNS)]
    for row in rows.rows:
        table.append(
            [
                row.measure,
                *(row.cells.get(t, "") for t in TARGETS),
                *row.versus,
                row.target,
                row.check,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    header = [f"{key}: {value}" for key, value in results.environment.items()]
    header.append(f"load average at end: {load_average()}")
    if "soak" in settings.only:
        header.append("soak run only: the fake backend and the router, nothing else")
    if "cold-start" in settings.only:
        header.append(
            f"cold starts only: {len(results.cold_starts)} requests for an unloaded model "
            "through serve, each figure the median [min-max] over them"
        )
    if settings.runs("replicas") or settings.runs("replica-kill"):
        header.append(_replicas_header(settings))
    if settings.runs("streams-paced"):
        header.append(
            f"paced: {settings.chunks} chunks a stream, clients started at random points "
            "within one stream's length (3 s at most), each point for "
            f"max({settings.paced_duration_s:g} s, 1.5 streams' length); "
            "CPU us/chunk: the proxy's CPU over the chunks relayed "
            "(its requests' cost included), 'slm vs direct' there is the ratio to nginx's"
        )
    if not settings.only:
        header.append(
            f"each figure: median of {settings.repeats} run(s) of {settings.duration_s:g} s "
            f"(streams {settings.stream_duration_s:g} s, {settings.chunks} chunks each), "
            "[min-max] over the runs; 'vs direct': ratio for rates, added ms for times; "
            "CPU: the proxy's per request or chunk (direct column: the backend's)"
        )
    misses = sum(1 for row in rows.rows if row.check == "MISS")
    checked = sum(1 for row in rows.rows if row.check in ("PASS", "MISS"))
    footer = f"targets: {checked - misses}/{checked} PASS"
    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [line(table[0]), separator, *(line(cells) for cells in table[1:])]
    return "\n".join([*header, "", *body, "", footer])
