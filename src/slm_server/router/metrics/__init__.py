"""Prometheus metrics of the router: requests, tokens, queues and backends."""

from slm_server.router.metrics.record import RequestRecord
from slm_server.router.metrics.scrape import CONTENT_TYPE, METRICS_PATH, RouterMetrics

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "RequestRecord", "RouterMetrics"]
