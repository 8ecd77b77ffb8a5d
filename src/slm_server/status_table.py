"""What ``slm-server ps``, ``load``, ``unload`` and ``start`` print, from
``/v1/backends/health``.

Pure functions of the health report and the time, so that every column is tested
without a server. Sizes are decimal (1 GB = 10^9 bytes), as in the config's
``memory_gb`` and ``router.memory_budget_gb`` and in the log lines, so the numbers
can be compared with each other directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("ROLE", "MODEL", "STATE", "MEMORY", "IN FLIGHT", "QUEUED", "IDLE", "TTL LEFT", "PINNED")
_NONE = "-"


def size(mb: int | None) -> str:
    """``memory_mb`` from the health report (MB of 10^6 bytes) in words: ``312 MB``,
    ``9.3 GB``, ``-``."""
    if mb is None:
        return _NONE
    if mb < 1000:
        return f"{mb} MB"
    return f"{mb / 1000:.1f} GB"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``: precise enough to read at a glance."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def state(report: Mapping[str, Any]) -> str:
    # A router that does not run its backends (`slm-server router`) has no state, only
    # the probe's status; a disabled entry has only its status.
    return str(report.get("state") or report.get("status") or _NONE)


def idle_seconds(report: Mapping[str, Any], now: float) -> float | None:
    """How long a running backend has had nothing to do; None when busy, not running or
    never used."""
    # idle_since counts from the later of the last request's end and the backend becoming
    # ready, as its idle_ttl_s does; a server that runs no backends gives last_used only.
    since = report["idle_since"] if "idle_since" in report else report.get("last_used")
    if report.get("state") != "ready" or since is None:
        return None
    if report.get("in_flight") or report.get("queued"):
        return None
    return max(0.0, now - float(since))


def ttl_left(report: Mapping[str, Any], now: float) -> float | None:
    """Seconds until an idle backend is stopped by its ``idle_ttl_s``; None when it has no
    TTL or is not idle."""
    ttl = report.get("idle_ttl_s")
    idle = idle_seconds(report, now)
    if ttl is None or idle is None:
        return None
    return max(0.0, float(ttl) - idle)


def row(role: str, report: Mapping[str, Any], now: float) -> tuple[str, ...]:
    """One role's cells, in the order of :data:`COLUMNS`."""
    idle = idle_seconds(report, now)
    left = ttl_left(report, now)
    pinned = report.get("pinned")
    return (
        role,
        str(report.get("model_id", _NONE)),
        state(report),
        f"{size(report.get('memory_mb'))} / {size(report.get('memory_estimate_mb'))}",
        _count(report.get("in_flight")),
        _count(report.get("queued")),
        _NONE if idle is None else duration(idle),
        _NONE if left is None else duration(left),
        _NONE if pinned is None else ("yes" if pinned else "no"),
    )


def _count(value: Any) -> str:
    return _NONE if value is None else str(value)


def table(reports: Mapping[str, Mapping[str, Any]], now: float) -> str:
    """The ``ps`` table, columns aligned with spaces, and below it the reason of each
    failed role (too long for a column). ``now`` is unix seconds, like ``last_used``."""
    if not reports:
        return "no models in this instance's config"
    rows = [COLUMNS, *(row(role, report, now) for role, report in reports.items())]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(COLUMNS))]
    lines = [_line(cells, widths) for cells in rows]
    for role, report in reports.items():
        if report.get("state") == "failed" and report.get("reason"):
            lines.append(f"{role}: failed: {report['reason']}")
    return "\n".join(lines)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def loaded_line(role: str, report: Mapping[str, Any]) -> str:
    """What ``load`` prints once the server answers: ``coder: ready (PID 123, 9.1 GB
    measured)``."""
    what = state(report)
    details = []
    if report.get("pid") is not None:
        details.append(f"PID {report['pid']}")
    if report.get("memory_mb") is not None:
        details.append(f"{size(report['memory_mb'])} measured")
    return f"{role}: {what} ({', '.join(details)})" if details else f"{role}: {what}"


def unloaded_line(role: str, report: Mapping[str, Any]) -> str:
    """What ``unload`` prints: ``chat: unloaded``."""
    return f"{role}: {state(report)}"


def start_line(role: str, report: Mapping[str, Any]) -> str | None:
    """What ``start`` prints about a model as its state changes; None: nothing to say."""
    state = report.get("state")
    name = f"{role} ({report.get('model_id', '?')})"
    if state == "ready":
        return f"{name}: ready"
    if state == "unloaded":
        return f"{name}: not loaded (starts on its first request)"
    if state == "failed":
        return f"{name}: FAILED: {report.get('reason')}"
    if state == "starting":
        return f"{name}: loading..."
    return None


def start_summary(states: Sequence[object], url: str) -> str | None:
    """``start``'s closing line once every model is ready, failed or loads on demand;
    None while any is still on its way.

    A model that loads on demand is settled while unloaded: its first request starts it,
    and ``start`` does not wait for it.
    """
    if not all(state in ("ready", "failed", "unloaded") for state in states):
        return None
    on_demand = states.count("unloaded")
    launched = len(states) - on_demand
    if on_demand and not launched:
        return f"ready at {url}; {on_demand} model(s) load on demand"
    summary = f"{states.count('ready')} of {launched} model(s) ready at {url}"
    return f"{summary}; {on_demand} more load on demand" if on_demand else summary
