"""What ``ps``, ``load`` and ``unload`` print, from health reports written out by hand."""

from __future__ import annotations

import re
from typing import Any

import pytest

from slm_server.status_table import (
    duration,
    idle_seconds,
    loaded_line,
    size,
    start_line,
    start_summary,
    table,
    ttl_left,
    unloaded_line,
)

NOW = 1_800_000_000.0


def report(**fields: Any) -> dict[str, Any]:
    """A health entry of a running, idle llamacpp backend; ``fields`` override."""
    return {
        "status": "healthy",
        "model_id": "gemma-3-270m",
        "backend": "llamacpp",
        "port": 8501,
        "model_type": "lm",
        "state": "ready",
        "pid": 4242,
        "restarts": 0,
        "memory_mb": 312,
        "memory_estimate_mb": 375,
        "in_flight": 0,
        "queued": 0,
        "last_used": NOW - 42,
        "idle_ttl_s": None,
        "pinned": False,
        "on_demand": False,
        **fields,
    }


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0 s"),
        (0.9, "0 s"),
        (42.7, "42 s"),
        (59.99, "59 s"),
        (60, "1 min"),
        (3 * 60 + 59, "3 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (2 * 3600 + 5 * 60 + 30, "2 h 5 min"),
        (24 * 3600, "1 d"),
        (3 * 86400 + 4 * 3600 + 59 * 60, "3 d 4 h"),
        (-5, "0 s"),  # a server clock a little ahead of ours
    ],
)
def test_durations_read_at_a_glance(seconds: float, expected: str) -> None:
    assert duration(seconds) == expected


@pytest.mark.parametrize(
    ("mb", "expected"),
    [
        (None, "-"),
        (0, "0 MB"),
        (312, "312 MB"),
        (999, "999 MB"),
        (1000, "1.0 GB"),  # decimal, like memory_gb and the log lines
        (9300, "9.3 GB"),
        (70_000, "70.0 GB"),
    ],
)
def test_sizes_are_decimal_like_the_config(mb: int | None, expected: str) -> None:
    assert size(mb) == expected


def test_idle_time_counts_only_for_a_running_backend_with_nothing_to_do() -> None:
    assert idle_seconds(report(), NOW) == 42
    assert idle_seconds(report(in_flight=1), NOW) is None
    assert idle_seconds(report(queued=2), NOW) is None
    assert idle_seconds(report(state="unloaded", pid=None), NOW) is None
    assert idle_seconds(report(state="starting"), NOW) is None
    assert idle_seconds(report(last_used=None), NOW) is None


def test_idle_time_counts_from_when_the_server_says_it_became_idle() -> None:
    # Reloaded 5 s ago, last request long before: idle for 5 s, as its TTL counts it.
    reloaded = report(last_used=NOW - 600, idle_since=NOW - 5, idle_ttl_s=60)
    assert idle_seconds(reloaded, NOW) == 5
    assert ttl_left(reloaded, NOW) == 55
    # Loaded by hand, never used: idle all the same.
    assert idle_seconds(report(last_used=None, idle_since=NOW - 3), NOW) == 3
    assert idle_seconds(report(idle_since=None), NOW) is None  # busy, by the server's word


def test_ttl_left_counts_down_while_idle_and_stops_at_zero() -> None:
    assert ttl_left(report(idle_ttl_s=300), NOW) == 258
    assert ttl_left(report(idle_ttl_s=30), NOW) == 0  # due: the server stops it soon
    assert ttl_left(report(idle_ttl_s=300, in_flight=1), NOW) is None  # busy: no countdown
    assert ttl_left(report(idle_ttl_s=None), NOW) is None


def test_table_aligns_every_column_and_says_dash_where_nothing_applies() -> None:
    reports = {
        "embed": report(model_id="nomic-embed", pinned=True, last_used=None),
        "chat": report(idle_ttl_s=300, last_used=NOW - 200),
        "coder": report(
            model_id="qwen-coder-30b",
            state="unloaded",
            status="unloaded",
            pid=None,
            memory_mb=None,
            memory_estimate_mb=9300,
            idle_ttl_s=600,
            on_demand=True,
        ),
        "busy": report(in_flight=2, queued=1, last_used=NOW - 1, idle_ttl_s=60),
    }
    lines = table(reports, NOW).splitlines()
    assert cells(lines) == [
        ["ROLE", "MODEL", "STATE", "MEMORY", "IN FLIGHT", "QUEUED", "IDLE", "TTL LEFT", "PINNED"],
        ["embed", "nomic-embed", "ready", "312 MB / 375 MB", "0", "0", "-", "-", "yes"],
        ["chat", "gemma-3-270m", "ready", "312 MB / 375 MB", "0", "0", "3 min", "1 min", "no"],
        ["coder", "qwen-coder-30b", "unloaded", "- / 9.3 GB", "0", "0", "-", "-", "no"],
        ["busy", "gemma-3-270m", "ready", "312 MB / 375 MB", "2", "1", "-", "-", "no"],
    ]
    starts = [lines[0].index(title) for title in cells(lines)[0]]
    for line in lines[1:]:
        row = cells([line])[0]
        assert [line.index(cell, start) for cell, start in zip(row, starts, strict=True)] == starts


def cells(lines: list[str]) -> list[list[str]]:
    """Each line's cells: the columns are at least two spaces apart, cells have one at most."""
    return [re.split(r" {2,}", line) for line in lines]


def test_a_failed_role_is_listed_with_its_reason_under_the_table() -> None:
    reason = "exited with code 1: gguf: bad magic"
    reports = {
        "chat": report(),
        "coder": report(state="failed", status="unreachable", pid=None, reason=reason),
    }
    lines = table(reports, NOW).splitlines()
    assert lines[2].split()[:3] == ["coder", "gemma-3-270m", "failed"]
    assert lines[-1] == f"coder: failed: {reason}"


def test_a_router_without_backends_of_its_own_shows_what_it_knows() -> None:
    """``slm-server router`` (and a disabled entry) report only the probe's status."""
    probed = {"status": "healthy", "model_id": "m", "backend": "llamacpp", "port": 9}
    disabled = {"status": "disabled", "model_id": "off", "backend": "mlx", "port": 10}
    lines = table({"chat": probed, "old": disabled}, NOW).splitlines()
    assert lines[1].split() == ["chat", "m", "healthy", "-", "/", "-", "-", "-", "-", "-", "-"]
    assert lines[2].split()[:3] == ["old", "off", "disabled"]


def test_no_models_says_so() -> None:
    assert table({}, NOW) == "no models in this instance's config"


def test_load_and_unload_say_the_outcome_in_one_line() -> None:
    assert loaded_line("coder", report(pid=123, memory_mb=9100)) == (
        "coder: ready (PID 123, 9.1 GB measured)"
    )
    assert loaded_line("coder", report(pid=123, memory_mb=None)) == "coder: ready (PID 123)"
    unloaded = report(state="unloaded", status="unloaded", pid=None, memory_mb=None)
    assert unloaded_line("chat", unloaded) == "chat: unloaded"


def test_start_reports_an_on_demand_model_as_not_loaded_and_does_not_wait_for_it() -> None:
    unloaded = report(state="unloaded", status="unloaded", pid=None, model_id="gemma")
    assert start_line("chat", unloaded) == "chat (gemma): not loaded (starts on its first request)"
    url = "http://127.0.0.1:8000"
    assert start_summary(["ready", "unloaded"], url) == (
        f"1 of 1 model(s) ready at {url}; 1 more load on demand"
    )
    all_on_demand = start_summary(["unloaded", "unloaded"], url)
    assert all_on_demand == f"ready at {url}; 2 model(s) load on demand"
    assert start_summary(["ready", "failed"], url) == f"1 of 2 model(s) ready at {url}"
    assert start_summary(["starting", "unloaded"], url) is None  # still waiting for the first
    assert start_summary(["ready", "stopping"], url) is None
