"""The benchmark's replica rows: the spread, the kill run's tally, their verdicts, a real run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cli import _parser as bench_parser
from bench.cli import settings_from
from bench.replica_kill import KillPlan, KillRun, Sent, tally
from bench.replicas import ReplicaRun, off_even
from bench.report import render
from bench.results import ROUTER, Results, Settings
from bench.router import write_openai_config
from bench.wrk import WrkRun

from slm_server.config.loader import load_config

REPO = Path(__file__).resolve().parents[1]


def test_off_even_is_the_farthest_replica_from_an_even_share() -> None:
    assert off_even([250, 250, 250, 250]) == 0
    assert off_even([300, 200, 250, 250]) == pytest.approx(0.2)
    assert off_even([1000, 0, 0, 0]) == pytest.approx(3.0)
    assert math.isnan(off_even([0, 0, 0, 0]))


def test_failures_are_told_apart_by_when_they_were_sent_against_the_kill() -> None:
    killed_at = 10.0
    records = [
        Sent(9.0, 9.5, ok=False),  # answered before the kill
        Sent(9.8, 10.2, ok=False),  # in flight at the kill
        Sent(9.9, 10.0, ok=False),  # ended at the very moment: in flight
        Sent(10.0, 10.1, ok=False),  # sent once it was dead
        Sent(11.0, 11.1, ok=False),
        Sent(9.9, 10.3, ok=True),
        Sent(10.5, 10.6, ok=True),
    ]
    counts = tally(records, killed_at)
    assert (counts.sent, counts.failed_after_kill, counts.failed_in_flight) == (7, 2, 2)
    assert counts.failed_before_kill == 1


def test_the_kill_run_outlasts_a_probe_that_finds_the_replica_still_down() -> None:
    plan = KillPlan(connections=32, kill_at_s=2, restart_at_s=4, cooldown_s=2)
    # Down at 2 s, cooled until 4 s; a probe at 4 s may fail (not listening yet) and cool
    # it until 6 s: the next probe, at 6 s, must fall inside the run.
    assert plan.duration_s > plan.restart_at_s + 2 * plan.cooldown_s


def test_one_port_is_a_base_url_the_router_loads(tmp_path: Path) -> None:
    config = load_config(write_openai_config(tmp_path / "one.yaml", [8001]))
    [entry] = config.file.models.values()
    assert (entry.backend, entry.base_url, entry.base_urls) == (
        "openai",
        "http://127.0.0.1:8001/v1",
        None,
    )


def test_several_ports_are_replicas_with_the_bench_cooldown(tmp_path: Path) -> None:
    ports = [8001, 8002, 8003, 8004]
    config = load_config(write_openai_config(tmp_path / "four.yaml", ports, cooldown_s=2))
    assert config.replica_groups == {"bench": ("bench@0", "bench@1", "bench@2", "bench@3")}
    replicas = [config.models[role] for role in config.replica_groups["bench"]]
    assert [entry.base_url for entry in replicas] == [f"http://127.0.0.1:{p}/v1" for p in ports]
    assert {(entry.id, entry.cooldown_s) for entry in replicas} == {("bench", 2)}


def _wrk(rps: float, errors: int = 0) -> WrkRun:
    return WrkRun(int(rps * 2), 2.0, errors, 1.0, 5.0, errors)


def _replica_table(
    many: list[tuple[float, tuple[int, ...]]], cpu_us: float = 65.0, errors: int = 0
) -> str:
    results = Results(Settings(only=("replicas",), repeats=len(many)))
    results.replicas = {
        1: [ReplicaRun(_wrk(10_000), 60.0, (20_000,)) for _ in many],
        4: [ReplicaRun(_wrk(rps, errors), cpu_us, counts) for rps, counts in many],
    }
    return render(results)


def verdict(table: str, row: str) -> str:
    [line] = [line for line in table.splitlines() if row in line]
    return line.rstrip(" |").rsplit("|", 1)[-1].strip()


def cell(table: str, row: str) -> str:
    [line] = [line for line in table.splitlines() if row in line]
    columns = [part.strip() for part in line.strip(" |").split("|")]
    return columns[3]  # measure, direct, nginx, slm_server


def test_an_even_spread_at_the_cost_of_one_upstream_passes() -> None:
    table = _replica_table([(9_800, (5_000, 4_800, 4_900, 4_900)), (9_600, (4_800,) * 4)])
    assert "targets: 3/3 PASS" in table
    assert cell(table, "4 base_urls c=256 req/s") == "9,700 [9,600-9,800] (0.97x 1 base_url)"
    assert cell(table, "4 base_urls c=256 CPU") == "65 [65-65] (1.08x 1 base_url)"
    shares = "25.3% / 24.7% / 25.0% / 25.0% (of 38,800)"
    assert cell(table, "share per replica") == shares
    assert cell(table, "off even") == "1.0 [0.0-2.0] %"


def test_one_run_far_off_even_or_a_costlier_request_or_an_error_misses() -> None:
    lopsided = _replica_table([(9_800, (4_900,) * 4), (9_800, (6_000, 4_000, 4_900, 4_700))])
    assert verdict(lopsided, "off even") == "MISS"
    costly = _replica_table([(9_800, (4_900,) * 4)], cpu_us=67)
    assert verdict(costly, "4 base_urls c=256 CPU us/request") == "MISS"
    assert verdict(_replica_table([(9_800, (4_900,) * 4)], errors=1), "socket errors") == "MISS"


def test_the_replica_rows_compare_with_the_plain_router_row_when_it_ran() -> None:
    results = Results(Settings())
    results.plain[(ROUTER, 256)] = [_wrk(12_000)]
    results.plain_cpu_us[(ROUTER, 256)] = [50.0]
    results.replicas = {1: [ReplicaRun(_wrk(9_000), 60.0, (1,))]}
    table = render(results)
    assert cell(table, "1 base_url c=256 req/s") == "9,000 (0.75x plain c=256)"
    assert cell(table, "1 base_url c=256 CPU us/request") == "60 (1.20x plain c=256)"


def _kill_table(*runs: KillRun) -> str:
    results = Results(Settings(only=("replica-kill",), repeats=len(runs)))
    results.replica_kills = list(runs)
    return render(results)


def _kill(**figures: object) -> KillRun:
    run = KillRun(connections=32, replicas=4, cooldown_s=2.0, requests=20_000)
    run.killed_before, run.killed_after = 2_500, 3_000
    run.restart_to_listening_s, run.recovery_s = 0.2, 1.8
    for name, value in figures.items():
        setattr(run, name, value)
    return run


def test_a_kill_nobody_noticed_and_a_replica_back_after_its_cooldown_pass() -> None:
    table = _kill_table(_kill(), _kill(recovery_s=1.9, failed_in_flight=1, killed_before=2_400))
    assert "targets: 2/2 PASS" in table
    assert cell(table, "in flight at the kill / before it") == "1 / 0"
    both = "2,450 [2,400-2,500] / 3,000 [3,000-3,000] (no x-slm-upstream header)"
    assert cell(table, "before kill / after restart") == both
    restart = "200 [200-200] / 2.050 [2.000-2.100]"
    assert cell(table, "listening ms / to its first request s") == restart
    assert cell(table, "listening to its first request") == "1.850 [1.800-1.900]"


def test_the_killed_replica_is_counted_in_the_router_header_too() -> None:
    seen = {"bench/0": 9_000, "bench/1": 9_100, "bench/2": 8_900, "bench/3": 5_500}
    table = _kill_table(_kill(upstreams=seen))
    assert cell(table, "before kill / after restart").endswith("(x-slm-upstream named it 5,500)")


def test_a_failure_after_the_kill_or_a_replica_never_back_misses() -> None:
    assert verdict(_kill_table(_kill(), _kill(failed_after_kill=1)), "sent after") == "MISS"
    never = _kill_table(_kill(), _kill(recovery_s=math.nan))
    assert verdict(never, "listening to its first request") == "MISS"
    assert "never back in 1 run(s)" in cell(never, "listening to its first request")
    assert verdict(_kill_table(_kill(recovery_s=2.6)), "listening to its first request") == "MISS"


def test_only_takes_several_parts_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = bench_parser().parse_args(["--only", "replicas,replica-kill", "--replicas", "3"])
    settings = settings_from(args)
    assert settings.only == ("replicas", "replica-kill")
    assert settings.runs("replica-kill") and not settings.runs("soak")
    assert settings.replicas == 3
    with pytest.raises(SystemExit):
        bench_parser().parse_args(["--only", "replicas,nginx"])
    assert "unknown part nginx" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("taskset") is None, reason="bench/run pins with taskset (Linux)")
def test_a_kill_with_nowhere_else_to_go_is_seen_by_the_client() -> None:
    """One replica: the run must count the failures a kill causes, and see it come back."""
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "replica-kill", "--quick", "--replicas", "1",
         "--replica-cooldown", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert verdict(ran.stdout, "sent after the kill") == "MISS", ran.stdout
    assert verdict(ran.stdout, "listening to its first request") == "PASS", ran.stdout


@pytest.mark.skipif(
    shutil.which("taskset") is None or shutil.which("wrk") is None,
    reason="bench/run pins with taskset (Linux) and loads with wrk",
)
def test_four_replicas_share_the_load_and_lose_no_request_to_a_kill(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    ran = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "replicas,replica-kill", "--quick",
         "--duration", "1", "--replica-cooldown", "0.5", "--json", str(figures)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = ran.stdout
    assert verdict(table, "replicas: non-2xx + socket errors") == "PASS", table
    assert cell(table, "4 base_urls c=256 share per replica").count("%") == 4, table
    assert verdict(table, "sent after the kill") == "PASS", table + ran.stderr[-3000:]
    assert "never back" not in cell(table, "listening to its first request"), table
    [kill] = json.loads(figures.read_text())["replica_kills"]
    assert kill["killed_at_s"] == pytest.approx(2, abs=0.1)
    assert kill["restarted_at_s"] == pytest.approx(4, abs=0.1)
    # The router's header names the killed replica as often as the fake counted requests
    # (less those answered between reading its count and the kill).
    named = sum(n for upstream, n in kill["upstreams"].items() if upstream.endswith("/3"))
    counted = kill["killed_before"] + kill["killed_after"]
    assert counted <= named <= counted + 10, kill
    assert kill["killed_after"] > 0
