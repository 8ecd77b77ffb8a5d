"""The benchmark's soak run: its verdicts, and a short run of it for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.report import render
from bench.results import Results, Settings
from bench.soak import Descriptors, SoakRun

REPO = Path(__file__).resolve().parents[1]


def soak_table(**figures: object) -> str:
    run = SoakRun(
        requests=1000,
        planned=1000,
        connections=64,
        elapsed_s=2.0,
        mark=100,
        rss_mark_mb=50.0,
        rss_end_mb=52.0,
        fds_before=Descriptors(total=14, pooled=0),
        fds_after=Descriptors(total=40, pooled=26),
    )
    for name, value in figures.items():
        setattr(run, name, value)
    results = Results(Settings(only=("soak",)))
    results.soak = run
    return render(results)


def verdict(table: str, row: str) -> str:
    [line] = [line for line in table.splitlines() if row in line]
    return line.rstrip(" |").rsplit("|", 1)[-1].strip()


def test_a_healthy_soak_passes_every_target() -> None:
    table = soak_table()
    assert "targets: 4/4 PASS" in table
    assert "50.0 -> 52.0 (+4.0%)" in table
    assert "14 -> 14 (+ pooled to backend: 0 -> 26)" in table


def test_growth_past_ten_percent_misses() -> None:
    assert verdict(soak_table(rss_end_mb=55.5), "RSS after 100 -> end") == "MISS"


def test_a_descriptor_left_open_misses_even_among_pooled_ones() -> None:
    leaked = soak_table(fds_after=Descriptors(total=41, pooled=26))
    assert verdict(leaked, "open fds") == "MISS"
    assert verdict(soak_table(fds_after=Descriptors(total=100, pooled=86)), "open fds") == "MISS"


def test_wrong_answers_and_an_unfinished_run_miss() -> None:
    assert verdict(soak_table(errors=3), "wrong answers") == "MISS"
    cut_short = soak_table(requests=700, timed_out=True)
    assert verdict(cut_short, "requests done") == "MISS"
    assert verdict(cut_short, "RSS after") == "MISS"  # growth over part of a run proves nothing


@pytest.mark.skipif(shutil.which("taskset") is None, reason="bench/run pins with taskset (Linux)")
def test_short_soak_through_the_real_router() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "soak", "--soak-requests", "600"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "targets: 4/4 PASS" in ran.stdout, ran.stdout + ran.stderr[-3000:]
