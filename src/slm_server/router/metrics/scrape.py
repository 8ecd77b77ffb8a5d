"""The router's metrics: counted per request, read out on ``GET /metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from slm_server.router.asgi import Send
from slm_server.router.load_figures import LoadFigures
from slm_server.router.metrics.collector import RouterCollector
from slm_server.router.metrics.record import RequestRecord
from slm_server.router.metrics.tallies import EndpointTally, RequestTallies
from slm_server.router.routing import Backend
from slm_server.supervisor import BackendProcess

METRICS_PATH = "/metrics"
# The text format every Prometheus reads (what generate_latest writes).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class RouterMetrics:
    """The tallies of one router app and the registry that exposes them.

    The registry is the app's own, not prometheus_client's global one: several apps in
    one process (tests) keep their numbers apart.
    """

    def __init__(
        self,
        model_ids: Iterable[str],
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        load: LoadFigures,
        waiting_to_start: Callable[[str], int] | None = None,
    ) -> None:
        """``waiting_to_start``: the requests waiting for a role to start or for memory
        (the scheduler's count; None: this router starts nothing)."""
        self.tallies = RequestTallies(model_ids)
        self.registry = CollectorRegistry(auto_describe=False)
        collector = RouterCollector(self.tallies, backends, processes, load, waiting_to_start)
        self.registry.register(collector)
        self._backends = backends
        self._processes = processes
        self._load = load

    def record(self, send: Send, path: str) -> RequestRecord:
        """The record of a request to ``path`` that has just arrived."""
        return RequestRecord(send, self.tallies, path)

    def slot(self, model: str, endpoint: str) -> EndpointTally:
        return self.tallies.slot(model, endpoint)

    async def exposition(self, measure_within_s: float) -> bytes:
        """The metrics in the text format, with the backends' memory measured afresh if
        that takes at most ``measure_within_s`` (else the last measurement)."""
        if self._processes:  # only the backends this router runs have a memory to measure
            enabled = {role: b for role, b in self._backends.items() if b.entry.enabled}
            try:
                async with asyncio.timeout(measure_within_s):
                    await self._load.measure(enabled, self._processes)
            except TimeoutError:
                pass
        # Read on the event loop in one go, the numbers agree with each other. Writing them
        # out takes several times longer (about half a millisecond per model endpoint in use on a
        # busy machine): a thread does it, so that requests in flight are not held up meanwhile.
        families = list(self.registry.collect())
        return await asyncio.to_thread(generate_latest, _Collected(families))


class _Collected(Collector):
    """Metric families already read, for ``generate_latest`` to write out."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
