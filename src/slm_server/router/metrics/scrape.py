"""The router's metrics: counted per request, read out on ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest

from slm_server.router.asgi import Headers, Send
from slm_server.router.load_figures import LoadFigures, enabled_backends
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
    ) -> None:
        self.tallies = RequestTallies(model_ids)
        # The slot of a model id and endpoint (RequestTallies.slot), without a call of
        # this class's own on every request.
        self.slot: Callable[[str, str], EndpointTally] = self.tallies.slot
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = collector = RouterCollector(self.tallies, backends, processes, load)
        self.registry.register(collector)
        self._enabled = enabled_backends(backends)
        self._processes = processes
        self._load = load

    def follow(self, model_ids: Iterable[str], backends: Mapping[str, Backend]) -> None:
        """After a config reload: series for new model ids, the backends read afresh; every
        count so far goes on (a scraper sees no reset)."""
        self.tallies.add_models(model_ids)
        self._collector.follow(backends)
        self._enabled = enabled_backends(backends)

    def record(
        self,
        send: Send,
        path: str,
        request_id: bytes = b"-",
        answer_headers: Headers | None = None,
        write_piece: Callable[[bytes], bool] | None = None,
    ) -> RequestRecord:
        """The record of a request to ``path`` that has just arrived (see RequestRecord)."""
        return RequestRecord(send, self.tallies, path, request_id, answer_headers, write_piece)

    def exposition(self) -> bytes:
        """The metrics in the text format, at once: the backends' memory as last measured
        (a new measurement is started in the background when that one is a few seconds
        old, for the next scrape; see LoadFigures.refresh).

        Written on the event loop: about a millisecond for a few models, and a thread
        would not free the loop anyway (the work holds the GIL) while it slows the
        scrape down under load."""
        if self._processes:  # only the backends this router runs have a memory to measure
            self._load.refresh(self._enabled, self._processes)
        return generate_latest(self.registry)
