"""The table's rows for replicated backends: load spread over replicas, and one killed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.replica_kill import KillRun
from bench.replicas import ReplicaRun
from bench.results import ROUTER, Results
from bench.stats import Figure, number, with_spread

# A replica's share may stray this far from an even one (a fraction of it), in every run.
MAX_OFF_EVEN = 0.10
# The router's CPU per request with many upstreams, against one (choosing an upstream
# and keeping its count should cost a few microseconds of some 90). CPU per request is
# the figure a busy machine disturbs least; the rate is shown beside it, not checked.
MAX_CPU_OF_ONE = 1.1
# After its cooldown, one probe brings a restarted replica back; allowed on top of it.
PROBE_SLACK_S = 0.5


@dataclass(frozen=True)
class Line:
    """One row: its figure goes in the router's column."""

    measure: str
    cell: str
    target: str = ""
    ok: bool | None = None


def _figure(runs: Sequence[ReplicaRun], value: Callable[[ReplicaRun], float]) -> Figure:
    return Figure.of(value(run) for run in runs)


def _percent(figure: Figure) -> str:
    if figure.missing:
        return "-"
    scaled = Figure(figure.median * 100, figure.low * 100, figure.high * 100, figure.runs)
    return with_spread(scaled, 1) + " %"


def _compared(figure: Figure, bases: dict[str, Figure]) -> str:
    """`` (0.95x 1 base_url, 0.90x plain c=256)``: the figure against each base present."""
    ratios = [
        f"{figure.median / base.median:.2f}x {name}"
        for name, base in bases.items()
        if not base.missing and base.median and not figure.missing
    ]
    return f" ({', '.join(ratios)})" if ratios else ""


def replica_lines(results: Results) -> list[Line]:
    settings, by_size = results.settings, results.replicas
    if not by_size:
        return []
    lines: list[Line] = []
    connections = settings.replica_connections
    one = by_size.get(1, [])
    plain = f"plain c={connections}"
    rate_bases = {
        "1 base_url": _figure(one, lambda run: run.wrk.rps),
        plain: Figure.of(run.rps for run in results.plain.get((ROUTER, connections), [])),
    }
    cpu_bases = {
        "1 base_url": _figure(one, lambda run: run.cpu_us),
        plain: Figure.of(results.plain_cpu_us.get((ROUTER, connections), [])),
    }
    for size, runs in sorted(by_size.items()):
        label = f"replicas: {size} base_url{'s' if size > 1 else ''} c={connections}"
        # One base_url is compared with the plain rows only, not with itself.
        compared_with = [name for name in rate_bases if size > 1 or name == plain]
        rate = _figure(runs, lambda run: run.wrk.rps)
        lines.append(
            Line(
                f"{label} req/s",
                with_spread(rate, 0) + _compared(rate, {n: rate_bases[n] for n in compared_with}),
            )
        )
        lines.append(Line(f"{label} p50 ms", with_spread(_figure(runs, lambda r: r.wrk.p50_ms), 3)))
        lines.append(Line(f"{label} p99 ms", with_spread(_figure(runs, lambda r: r.wrk.p99_ms), 3)))
        cpu = _figure(runs, lambda run: run.cpu_us)
        cpu_cell = with_spread(cpu, 0) + _compared(cpu, {n: cpu_bases[n] for n in compared_with})
        cpu_one = cpu_bases["1 base_url"]
        if size > 1 and not cpu_one.missing:
            lines.append(
                Line(
                    f"{label} CPU us/request",
                    cpu_cell,
                    f"<= {MAX_CPU_OF_ONE:g}x 1 base_url",
                    cpu.median <= MAX_CPU_OF_ONE * cpu_one.median,
                )
            )
            lines.extend(_spread_lines(label, runs))
        else:
            lines.append(Line(f"{label} CPU us/request", cpu_cell))
    errors = sum(run.wrk.errors for runs in by_size.values() for run in runs)
    lines.append(
        Line("replicas: non-2xx + socket errors (all runs)", f"{errors:,}", "0", errors == 0)
    )
    return lines


def _spread_lines(label: str, runs: Sequence[ReplicaRun]) -> list[Line]:
    totals = [sum(column) for column in zip(*(run.counts for run in runs), strict=True)]
    overall = sum(totals)
    shares = " / ".join(f"{count / overall:.1%}" if overall else "-" for count in totals)
    spread = _figure(runs, lambda run: run.off_even)
    return [
        Line(f"{label} share per replica", f"{shares} (of {number(overall, 0)})"),
        Line(
            f"{label} farthest replica off even",
            _percent(spread),
            f"<= {MAX_OFF_EVEN:.0%} every run",
            None if spread.missing else spread.high <= MAX_OFF_EVEN,
        ),
    ]


def _named(runs: Sequence[KillRun]) -> str:
    """How often the router's x-slm-upstream header named the killed replica, per run."""
    if not any(upstream for run in runs for upstream in run.upstreams):
        return " (no x-slm-upstream header)"
    named = Figure.of(float(run.named_killed) for run in runs)
    return f" (x-slm-upstream named it {with_spread(named, 0)})"


def kill_lines(results: Results) -> list[Line]:
    runs = results.replica_kills
    if not runs:
        return []
    first = runs[0]
    label = f"replica-kill c={first.connections}, {first.replicas} replica(s)"
    after = sum(run.failed_after_kill for run in runs)
    recovery = Figure.of(run.recovery_s for run in runs)
    never = sum(1 for run in runs if math.isnan(run.recovery_s))
    recovery_cell = with_spread(recovery, 3)
    if never:
        recovery_cell = f"{recovery_cell}; never back in {never} run(s)"
    limit = first.cooldown_s + PROBE_SLACK_S

    def median(value: Callable[[KillRun], float], digits: int) -> str:
        return with_spread(Figure.of(value(run) for run in runs), digits)

    return [
        Line(f"{label}: requests", median(lambda run: run.requests, 0)),
        Line(f"{label}: failed, sent after the kill (all runs)", f"{after:,}", "0", after == 0),
        Line(
            f"{label}: failed, in flight at the kill / before it",
            f"{sum(run.failed_in_flight for run in runs):,} / "
            f"{sum(run.failed_before_kill for run in runs):,}",
        ),
        Line(
            f"{label}: killed replica's requests before kill / after restart",
            f"{median(lambda run: run.killed_before, 0)} / "
            f"{median(lambda run: run.killed_after, 0)}{_named(runs)}",
        ),
        Line(
            f"{label}: restart to listening ms / to its first request s",
            f"{median(lambda run: run.restart_to_listening_s * 1000, 0)} / "
            f"{median(lambda run: run.restart_to_listening_s + run.recovery_s, 3)}",
        ),
        Line(
            f"{label}: listening to its first request s (cooldown_s {first.cooldown_s:g})",
            recovery_cell,
            f"<= {limit:g} s",
            not never and recovery.high <= limit,
        ),
    ]
