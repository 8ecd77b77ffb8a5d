"""After the load: the router's /metrics read once, timed, and its count of answers checked.

Every chat request the load generators saw answered must be in ``slm_requests_total``
(the router may count more: warm-up runs and requests cut off at a run's end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.router import ADMIN_HEADERS, MODEL_ID

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class MetricsCheck:
    scrape_ms: float
    counted: int  # chat answers with a 2xx status, as the router counted them
    answered: int  # chat answers the plain runs got (wrk: requests less errors)

    @property
    def complete(self) -> bool:
        return self.counted >= self.answered


def check_metrics(base_url: str, answered: int) -> MetricsCheck:
    started = time.perf_counter()
    response = httpx.get(f"{base_url}/metrics", headers=ADMIN_HEADERS, timeout=30)
    scrape_ms = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return MetricsCheck(scrape_ms, counted_answers(response.text), answered)


def counted_answers(exposition: str) -> int:
    """The 2xx chat answers of the bench model in a /metrics text, over every key."""
    wanted = {"model": MODEL_ID, "endpoint": CHAT, "status_class": "2xx"}
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "slm_requests_total" and all(
                labels.get(name) == value for name, value in wanted.items()
            ):
                total += sample.value
    return int(total)
