"""The benchmark's paced stream points: their verdicts, their options, and a short real run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cli import _parser as bench_parser
from bench.cli import settings_from
from bench.paced import run_duration_s
from bench.report import render
from bench.results import DIRECT, NGINX, ROUTER, Results, Settings
from bench.streams import StreamRun

REPO = Path(__file__).resolve().parents[1]


def run(
    rate: float, ttfc_ms: float, cpu_us: float, errors: int = 0, load: float = 0.3
) -> StreamRun:
    chunks = int(rate * 10)
    return StreamRun(
        streams=chunks // 64,
        chunks=chunks,
        errors=errors,
        elapsed_s=10.0,
        target_cpu_s=cpu_us * chunks / 1e6,
        load_cpu_s=load * 10.0,
        ttfc_ms=[ttfc_ms],
    )


def paced_table(router: StreamRun, nginx: StreamRun | None = None, rss_mb: float = 120.0) -> str:
    results = Results(Settings(only=("streams-paced",)))
    nginx = nginx or run(9_900, 21.4, 13.0)
    for concurrency, gap in results.settings.paced_points:
        point = {DIRECT: run(10_000, 21.0, 12.0), NGINX: nginx, ROUTER: router}
        for target, figures in point.items():
            results.paced[(target, concurrency, gap)] = [figures]
        results.paced_rss_mb[(NGINX, concurrency, gap)] = [32.0]
        results.paced_rss_mb[(ROUTER, concurrency, gap)] = [rss_mb]
    return render(results)


def line(table: str, row: str) -> str:
    [found] = [text for text in table.splitlines() if row in text]
    return found


def verdict(table: str, row: str) -> str:
    return line(table, row).rstrip(" |").rsplit("|", 1)[-1].strip()


def test_a_router_as_good_as_the_targets_passes_them_all() -> None:
    table = paced_table(run(9_800, 21.8, 24.0))
    assert "MISS" not in table, table
    assert verdict(table, "paced c=1024 gap=100ms chunks/s") == "PASS"
    assert verdict(table, "paced c=256 gap=20ms TTFC p50 ms") == "PASS"
    assert verdict(table, "paced c=64 gap=5ms CPU us/chunk") == "PASS"
    assert "1.85x nginx" in line(table, "paced c=256 gap=20ms CPU us/chunk")
    assert verdict(table, "paced c=1024 gap=100ms RSS peak MB") == "PASS"


def test_each_target_misses_on_its_own_figure() -> None:
    assert verdict(paced_table(run(9_600, 21.8, 24.0)), "c=256 gap=20ms chunks/s") == "MISS"
    assert verdict(paced_table(run(9_800, 21.8, 27.0)), "c=64 gap=5ms CPU us/chunk") == "MISS"
    assert verdict(paced_table(run(9_800, 22.5, 24.0)), "c=256 gap=20ms TTFC") == "MISS"
    errors = paced_table(run(9_800, 21.8, 24.0, errors=1))
    assert verdict(errors, "c=1024 gap=100ms errors") == "MISS"
    rss = paced_table(run(9_800, 21.8, 24.0), rss_mb=230.0)
    assert verdict(rss, "c=1024 gap=100ms RSS peak MB") == "MISS"


def test_added_first_chunk_time_may_be_nginx_s_plus_half_a_millisecond() -> None:
    slow_nginx = run(9_900, 23.0, 13.0)  # nginx adds 2 ms in this run
    table = paced_table(run(9_800, 23.4, 24.0), nginx=slow_nginx)
    assert verdict(table, "paced c=256 gap=20ms TTFC p50 ms") == "PASS"
    table = paced_table(run(9_800, 23.6, 24.0), nginx=slow_nginx)
    assert verdict(table, "paced c=256 gap=20ms TTFC p50 ms") == "MISS"


def test_a_saturated_load_cpu_is_said_and_not_judged() -> None:
    table = paced_table(run(9_000, 30.0, 24.0, load=0.95))
    assert verdict(table, "c=1024 gap=100ms load CPU busy %") == "MISS"
    assert "not judged" in line(table, "c=1024 gap=100ms chunks/s")
    assert verdict(table, "c=1024 gap=100ms chunks/s") == "-"
    assert verdict(table, "c=1024 gap=100ms TTFC p50 ms") == "-"


def test_points_and_duration_options() -> None:
    args = bench_parser().parse_args(["--only", "streams-paced", "--paced", "32@5,512@50"])
    settings = settings_from(args)
    assert settings.paced_points == ((32, 5.0), (512, 50.0))
    # Every client must have started and most must stream twice: 1.5 streams' length.
    assert run_duration_s(settings, 100.0) == pytest.approx(9.6)
    assert run_duration_s(settings, 5.0) == settings.paced_duration_s
    quick = settings_from(bench_parser().parse_args(["--quick"]))
    assert quick.paced_duration_s == 2.0
    with pytest.raises(SystemExit):
        bench_parser().parse_args(["--paced", "256"])


@pytest.mark.skipif(
    shutil.which("taskset") is None or shutil.which("nginx") is None,
    reason="bench/run pins with taskset (Linux) and compares with nginx",
)
def test_a_short_paced_run_through_every_target(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "streams-paced", "--quick",
         "--paced", "16@5,32@10", "--paced-duration", "1", "--json", str(figures)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = ran.stdout
    for target in (DIRECT, NGINX, ROUTER):
        [one] = json.loads(figures.read_text())["paced"][f"{target} c=32 gap=10ms"]
        assert one["chunks"] > 0 and one["errors"] == 0, one
        assert 0 < one["load_busy"] < 1, one
        assert one["events_per_read"] >= 1, one
    assert "x nginx" in line(table, "paced c=16 gap=5ms CPU us/chunk"), table
    assert verdict(table, "paced c=32 gap=10ms RSS peak MB") == "PASS", table
