"""The router's /metrics around the plain runs: its count of answers checked against
wrk's, and, after all the load, one scrape timed.

What the counts mean, exactly. wrk's ``requests`` are the responses it read whole,
non-2xx ones included (its ``status`` errors, status >= 400, are among them); socket
errors (connect, read, write) and timeouts are counted apart, outside ``requests``. So
the 2xx answers wrk read are ``requests - status errors``. The router counts an answer
once its last byte is handed to the socket. When a run's time is up, wrk drops the
requests it has in flight unread, and the router may have sent some of those whole. So
over the plain runs the router's 2xx count is wrk's plus at most the connections open
when each run stopped, never less. Each count is read once the router has no request of
the bench model in flight, so that no answer of another run falls on the wrong side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.router import ADMIN_HEADERS, MODEL_ID

CHAT = "/v1/chat/completions"
_SETTLE_S = 10.0  # for the requests a run left behind to end, at most


@dataclass(frozen=True)
class MetricsCheck:
    scrape_ms: float
    counted: int  # 2xx chat answers the router counted over the plain runs
    answered: int  # 2xx answers wrk read in those runs (requests less status errors)
    dropped_at_most: int  # requests wrk may have left unread as its runs stopped

    @property
    def complete(self) -> bool:
        """Every answer counted, once, and no more than wrk could have dropped unread."""
        return self.answered <= self.counted <= self.answered + self.dropped_at_most


def counted_now(base_url: str) -> int:
    """The bench model's 2xx chat answers so far, once it has no request in flight."""
    with httpx.Client(base_url=base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        deadline = time.monotonic() + _SETTLE_S
        while True:
            text = _scrape(client)
            if _in_flight(text) == 0 or time.monotonic() > deadline:
                return counted_answers(text)
            time.sleep(0.05)


def timed_scrape_ms(base_url: str) -> float:
    """How long one scrape takes the router, as a Prometheus server sees it: its client
    and connection are made first (with an untimed scrape), then a second one is timed."""
    with httpx.Client(base_url=base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        _scrape(client)
        started = time.perf_counter()
        _scrape(client)
        return (time.perf_counter() - started) * 1000


def check_metrics(base_url: str, counted: int, answered: int, dropped_at_most: int) -> MetricsCheck:
    """``counted``: the difference of ``counted_now`` before and after the plain runs."""
    return MetricsCheck(timed_scrape_ms(base_url), counted, answered, dropped_at_most)


def _scrape(client: httpx.Client) -> str:
    response = client.get("/metrics")
    response.raise_for_status()
    return response.text


def counted_answers(exposition: str) -> int:
    """The 2xx chat answers of the bench model in a /metrics text, over every key."""
    wanted = {"model": MODEL_ID, "endpoint": CHAT, "status_class": "2xx"}
    return int(_sum(exposition, "slm_requests_total", wanted))


def _in_flight(exposition: str) -> int:
    wanted = {"model": MODEL_ID}
    return int(_sum(exposition, "slm_in_flight_requests", wanted))


def _sum(exposition: str, name: str, wanted: dict[str, str]) -> float:
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == name and all(labels.get(k) == v for k, v in wanted.items()):
                total += sample.value
    return total
