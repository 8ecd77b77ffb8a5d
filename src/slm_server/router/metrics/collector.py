"""The metric families, built from the router's own numbers each time /metrics is read.

A custom collector: the request path keeps plain numbers (see tallies.py) and the
backends' state is read where it lives (admission gates, backend processes, measured
memory), so nothing here runs per request. prometheus_client writes the format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from slm_server.balance import Standing
from slm_server.router.load_figures import LoadFigures, enabled_backends
from slm_server.router.metrics.tallies import NO_MODEL, STATUS_CLASSES, RequestTallies
from slm_server.router.routing import Backend
from slm_server.supervisor import BackendProcess

# A backend's states as `ps` and /v1/backends/health name them (stopped is "unloaded").
BACKEND_STATES = ("unloaded", "starting", "ready", "stopping", "failed")

# Always given for a model endpoint in use, so that ratios of them have both sides.
_USUAL_CLASSES = frozenset({"2xx", "4xx", "5xx"})


class RouterCollector(Collector):
    """Every metric family of one router, read afresh from its tallies, admission gates,
    backend processes and load figures on each ``collect`` (one /metrics scrape).
    """

    def __init__(
        self,
        tallies: RequestTallies,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        load: LoadFigures,
    ) -> None:
        self._tallies = tallies
        self._backends = enabled_backends(backends)
        self._processes = processes
        self._load = load

    def follow(self, backends: Mapping[str, Backend]) -> None:
        """Read these backends from now on (a config reload changed them)."""
        self._backends = enabled_backends(backends)

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._waiting()
        yield from self._backend_processes()
        yield from self._upstreams()

    def _upstreams(self) -> Iterator[Metric]:
        """Per upstream of a balanced model: its attempts by outcome, and whether it is out
        of rotation now. Only configured upstreams, so the labels stay few."""
        attempts = CounterMetricFamily(
            "slm_upstream_attempts",
            "Attempts sent to the upstream by requests of a balanced model, by result: "
            "answered, or the failure (refused, connect_timeout, reset, head_timeout, 502, "
            "503, 429, broken, server_error).",
            labels=["model", "upstream", "result"],
        )
        cooling = GaugeMetricFamily(
            "slm_upstream_cooling",
            "1 while the upstream is out of rotation after failures (cooling or probed).",
            labels=["model", "upstream"],
        )
        now: float | None = None
        for backend in self._backends.values():
            balancer = backend.balancer
            if balancer is None:
                continue
            if now is None:  # the balancers' clock: the event loop's
                now = asyncio.get_running_loop().time()
            labels = [backend.entry.id, backend.upstream_name]
            for result, count in backend.attempts.items():
                attempts.add_metric([*labels, result], count)
            out = balancer.standing(backend.role, now) is not Standing.IN_ROTATION
            cooling.add_metric(labels, 1 if out else 0)
        yield from (attempts, cooling)

    def _requests(self) -> Iterator[Metric]:
        tallies = self._tallies
        requests = CounterMetricFamily(
            "slm_requests_total",
            "Requests to the model endpoints, by model, endpoint, HTTP status class of the "
            "answer (closed: the client left before it began) and API key name (- for none).",
            labels=["model", "endpoint", "status_class", "key"],
        )
        duration = HistogramMetricFamily(
            "slm_request_duration_seconds",
            "Time from a request's arrival to the end of its whole answer.",
            labels=["model", "endpoint"],
        )
        first_byte = HistogramMetricFamily(
            "slm_time_to_first_byte_seconds",
            "Streamed answers: time from the request's arrival to the first byte of its body.",
            labels=["model", "endpoint"],
        )
        tokens = CounterMetricFamily(
            "slm_tokens_total",
            "Tokens as the backends reported them in their answers' usage "
            "(prompt: read; completion: generated).",
            labels=["model", "kind"],
        )
        token_sums: dict[str, list[int]] = {}
        for slot in tallies.used_slots():
            for key, counts in slot.by_key.items():
                for status_class, count in zip(STATUS_CLASSES, counts, strict=True):
                    if count or status_class in _USUAL_CLASSES:
                        labels = [slot.model, slot.endpoint, status_class, key]
                        requests.add_metric(labels, count)
            histogram = slot.duration
            duration.add_metric([slot.model, slot.endpoint], histogram.buckets(), histogram.sum)
            if slot.first_byte.count:
                histogram = slot.first_byte
                labels = [slot.model, slot.endpoint]
                first_byte.add_metric(labels, histogram.buckets(), histogram.sum)
            sums = token_sums.setdefault(slot.model, [0, 0])
            sums[0] += slot.prompt_tokens
            sums[1] += slot.completion_tokens
        token_sums.pop(NO_MODEL, None)  # no backend answered those: never any usage
        for model, (prompt, completion) in token_sums.items():
            tokens.add_metric([model, "prompt"], prompt)
            tokens.add_metric([model, "completion"], completion)
        overhead = HistogramMetricFamily(
            "slm_router_overhead_seconds",
            "The router's own time on a forwarded request (the x-slm-overhead-ms header): "
            "without the upload, the queue, and the backend's work.",
        )
        overhead.add_metric([], tallies.overhead.buckets(), tallies.overhead.sum)
        rejected = CounterMetricFamily(
            "slm_rejected_requests_total",
            "Requests the router refused, by model (- when unknown) and reason: queue_full, "
            "timeout (its default_timeout ran out), memory, auth.",
            labels=["model", "reason"],
        )
        for (model, reason), count in sorted(tallies.rejected.items()):
            rejected.add_metric([model, reason], count)
        yield from (requests, duration, first_byte, tokens, overhead, rejected)

    def _waiting(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "slm_in_flight_requests",
            "Requests holding one of the model's slots (its max_concurrency) now.",
            labels=["model"],
        )
        queued = GaugeMetricFamily(
            "slm_queued_requests",
            "Requests waiting for one of the model's slots, or for the model to start, now.",
            labels=["model"],
        )
        for role, backend in self._backends.items():
            in_flight.add_metric([backend.entry.id], backend.gate.active)
            queued.add_metric([backend.entry.id], self._load.queued(role, backend))
        yield from (in_flight, queued)

    def _backend_processes(self) -> Iterator[Metric]:
        """Only for backends this router runs (``serve``), but for ``slm_backend_up`` of
        servers elsewhere, as their last health probe found them."""
        up = GaugeMetricFamily(
            "slm_backend_up",
            "1 when the backend is ready to serve, else 0.",
            labels=["role", "model"],
        )
        state = GaugeMetricFamily(
            "slm_backend_state",
            "The backend's state: 1 for the state it is in, 0 for the others.",
            labels=["role", "state"],
        )
        restarts = CounterMetricFamily(
            "slm_backend_restarts_total",
            "Times the backend was started again after it exited or failed to start.",
            labels=["role"],
        )
        memory = GaugeMetricFamily(
            "slm_backend_memory_peak_bytes",
            "The most memory the backend's running process (with its children) was measured "
            "at since it started; 0 when stopped, absent until its first measurement.",
            labels=["role"],
        )
        load = GaugeMetricFamily(
            "slm_backend_load_seconds",
            "Time the backend's last successful start took, from its spawn to ready.",
            labels=["role"],
        )
        elsewhere = {r for r, b in self._backends.items() if not b.entry.started_here}
        for role in elsewhere:
            backend = self._backends[role]
            if backend.unusable is not None or backend.probed_up is not None:
                up.add_metric([role, backend.entry.id], 1 if backend.probed_up else 0)
        for role, process in self._processes.items():
            if role in elsewhere:  # its old process, stopping after a reload moved it
                continue
            current = "unloaded" if process.state == "stopped" else process.state
            up.add_metric([role, process.entry.id], 1 if current == "ready" else 0)
            for name in BACKEND_STATES:
                state.add_metric([role, name], 1 if name == current else 0)
            restarts.add_metric([role], process.restarts)
            peak = self._load.peak(role, process.pid)
            if process.pid is None or peak is not None:  # running, not measured yet: unknown
                memory.add_metric([role], peak or 0)
            if process.load_s is not None:
                load.add_metric([role], process.load_s)
        yield from (up, state, restarts, memory, load)
