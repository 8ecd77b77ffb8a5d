"""The benchmark's /metrics check: its count of answers, its verdicts, and a real scrape."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from bench.metrics_check import CHAT, MetricsCheck, check_metrics, counted_answers, counted_now
from bench.report import render
from bench.results import Results, Settings
from bench.router import AUTH_HEADERS, MODEL_ID, write_config

from fake_backend_proc import FakeBackend
from router_proc import RouterProcess
from slm_server.router.load_figures import LoadFigures
from slm_server.router.metrics import RouterMetrics
from slm_server.router.metrics.tallies import CUT


def test_counted_answers_are_the_bench_model_chat_2xx_of_every_key() -> None:
    metrics = RouterMetrics([MODEL_ID, "other"], {}, {}, LoadFigures(Path(".")))
    chat = metrics.slot(MODEL_ID, CHAT)
    for key, status_class in (("-", 2), ("-", 2), ("alice", 2), ("-", 5), ("-", 0), ("-", CUT)):
        chat.count(key, status_class)
        chat.duration.observe(0.01)
    for slot in (metrics.slot(MODEL_ID, "/v1/completions"), metrics.slot("other", CHAT)):
        slot.count("-", 2)
        slot.duration.observe(0.01)
    exposition = metrics.exposition().decode()
    assert counted_answers(exposition) == 3


def verdict(table: str, row: str) -> str:
    [line] = [line for line in table.splitlines() if row in line]
    return line.rstrip(" |").rsplit("|", 1)[-1].strip()


def test_every_answer_counted_and_a_quick_scrape_pass() -> None:
    results = Results(Settings())
    # 64 dropped at most: 30 answers sent whole as wrk stopped, never read by it.
    results.metrics = MetricsCheck(scrape_ms=4.0, counted=1130, answered=1100, dropped_at_most=64)
    table = render(results)
    assert verdict(table, "/metrics scrape") == "PASS"
    assert verdict(table, "/metrics chat 2xx counted") == "PASS"
    assert "1,130 / 1,100" in table


@pytest.mark.parametrize("counted", [1099, 1165, 2200])  # one missed; too many; all twice
def test_an_answer_left_uncounted_or_counted_twice_or_a_slow_scrape_miss(counted: int) -> None:
    results = Results(Settings())
    results.metrics = MetricsCheck(
        scrape_ms=150.0, counted=counted, answered=1100, dropped_at_most=64
    )
    table = render(results)
    assert verdict(table, "/metrics scrape") == "MISS"
    assert verdict(table, "/metrics chat 2xx counted") == "MISS"


def test_the_check_against_a_real_router(tmp_path: Path) -> None:
    with FakeBackend() as fake:
        # The bench's own config, API keys included: the check reads /metrics with its key.
        config = yaml.safe_load(write_config(tmp_path, fake.port).read_text())
        router = RouterProcess(config, tmp_path).start()
        try:
            body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
            before = counted_now(router.url)
            with httpx.Client(base_url=router.url, headers=AUTH_HEADERS, timeout=10) as client:
                for _ in range(4):
                    assert client.post(CHAT, json=body).status_code == 200
            counted = counted_now(router.url) - before
            check = check_metrics(router.url, counted, answered=4, dropped_at_most=0)
        finally:
            router.stop()
    assert check.counted == 4 and check.complete
    assert check.scrape_ms > 0
