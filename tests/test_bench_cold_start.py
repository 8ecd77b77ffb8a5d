"""The benchmark's cold-start figure: its verdict, and a short run of it for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cold_start import ColdStart
from bench.report import render
from bench.results import Results, Settings

REPO = Path(__file__).resolve().parents[1]
ROW = "cold start (serve): router's part ms"


def verdict(table: str, row: str) -> str:
    [line] = [line for line in table.splitlines() if row in line]
    return line.rstrip(" |").rsplit("|", 1)[-1].strip()


def cold_table(*router_parts_ms: float) -> str:
    results = Results(Settings(only=("cold-start",)))
    results.cold_starts = [
        # The router's part is the two spans it owns; the backend's loading is not in it.
        ColdStart(total_s=0.5, to_spawn_s=ms / 2000, to_first_byte_s=ms / 2000, poll_wait_s=0.03)
        for ms in router_parts_ms
    ]
    return render(results)


def test_the_router_s_part_is_judged_by_its_median() -> None:
    assert verdict(cold_table(4.0, 6.0, 80.0), ROW) == "PASS"  # one slow start is noise
    assert verdict(cold_table(40.0, 60.0, 80.0), ROW) == "MISS"
    assert "6.0 [4.0-80.0]" in cold_table(4.0, 6.0, 80.0)


def test_no_cold_start_measured_is_no_verdict() -> None:
    assert verdict(cold_table(), ROW) == "-"


@pytest.mark.skipif(shutil.which("taskset") is None, reason="bench/run pins with taskset (Linux)")
def test_cold_starts_through_serve() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "cold-start", "--cold-starts", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert verdict(ran.stdout, ROW) == "PASS", ran.stdout + ran.stderr[-3000:]
    assert "cold start 2/2" in ran.stderr and "cold start 3/2" not in ran.stderr
