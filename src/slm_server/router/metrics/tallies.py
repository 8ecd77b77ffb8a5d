"""What the router counts per request, kept in slots made once at start-up.

The request path only adds to numbers in a slot it was handed: the slot of each
(configured model id, model endpoint) exists from the start, so no label tuple or
dictionary entry is built per request. Labels stay bounded: a request that names no
served model is counted under the model ``-``, and only the model endpoints are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from slm_server.router.metrics.histogram import (
    LATENCY_BUCKETS_S,
    OVERHEAD_BUCKETS_S,
    Histogram,
)
from slm_server.router.routing import ENDPOINT_MODEL_TYPES

NO_MODEL = "-"  # a request that named no model this router serves
NO_KEY = "-"  # a request made without an API key

# Indexed by status // 100; 0: the client hung up before the answer began (no status).
# "cut": the answer began but never ended (the client left, or the backend stopped
# sending and no error could be added); an error after the status line counts as 5xx.
STATUS_CLASSES = ("closed", "1xx", "2xx", "3xx", "4xx", "5xx", "cut")
SERVER_ERROR = 5  # the index of 5xx
CUT = 6  # the index of cut

# Why the router itself refused a request, by its error code. Errors not listed (a bad
# request, a backend that failed) are answers, not refusals: they count in requests only.
REJECTION_REASONS = {
    "queue_full": "queue_full",
    "backend_timeout": "timeout",
    "insufficient_memory": "memory",
    # The request bodies in flight fill the router's allowance (router.max_inflight_body_mb):
    # a limit of the router, not of the backends' memory.
    "router_busy": "router_busy",
    "invalid_api_key": "auth",
    "model_not_allowed": "auth",
    "admin_required": "auth",
}


class EndpointTally:
    """One model's requests to one endpoint: answers by key and status class, durations,
    times to first byte of streams, and the tokens its backend reported."""

    __slots__ = (
        "by_key",
        "completion_tokens",
        "duration",
        "endpoint",
        "first_byte",
        "model",
        "prompt_tokens",
    )

    def __init__(self, model: str, endpoint: str) -> None:
        self.model = model
        self.endpoint = endpoint
        # Key name -> counts indexed like STATUS_CLASSES; keys appear as they are used.
        self.by_key: dict[str, list[int]] = {NO_KEY: [0] * len(STATUS_CLASSES)}
        self.duration = Histogram(LATENCY_BUCKETS_S)
        self.first_byte = Histogram(LATENCY_BUCKETS_S)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def count(self, key: str, status_class: int) -> None:
        """One answer of ``status_class`` (an index of STATUS_CLASSES) to a request made
        with ``key``."""
        counts = self.by_key.get(key)
        if counts is None:
            counts = self.by_key[key] = [0] * len(STATUS_CLASSES)
        counts[status_class] += 1

    @property
    def used(self) -> bool:
        return self.duration.count > 0


class RequestTallies:
    """Every slot, the refusals, and the router's own time on the requests it forwarded."""

    def __init__(self, model_ids: Iterable[str]) -> None:
        models = [*dict.fromkeys(model_ids), NO_MODEL]
        self._slots = {
            model: {endpoint: EndpointTally(model, endpoint) for endpoint in ENDPOINT_MODEL_TYPES}
            for model in models
        }
        # Before its model is known, a request is counted in these (path -> slot).
        self.unrouted = self._slots[NO_MODEL]
        self.models = tuple(models)
        self.rejected: dict[tuple[str, str], int] = {}  # (model, reason) -> count
        self.overhead = Histogram(OVERHEAD_BUCKETS_S)

    def add_models(self, model_ids: Iterable[str]) -> None:
        """Slots for model ids served from now on (a config reload); those counted stay."""
        for model in model_ids:
            if model not in self._slots:
                self._slots[model] = {
                    endpoint: EndpointTally(model, endpoint) for endpoint in ENDPOINT_MODEL_TYPES
                }
        self.models = tuple(self._slots)

    def slot(self, model: str, endpoint: str) -> EndpointTally:
        """The slot of a configured ``model`` (else ``-``) and a model ``endpoint``."""
        return self._slots.get(model, self.unrouted)[endpoint]

    def reject(self, model: str, code: str | None) -> None:
        """Count a refusal, if the error ``code`` is one (see REJECTION_REASONS)."""
        reason = REJECTION_REASONS.get(code or "")
        if reason is not None:
            key = (model, reason)
            self.rejected[key] = self.rejected.get(key, 0) + 1

    def used_slots(self) -> Iterator[EndpointTally]:
        for endpoints in self._slots.values():
            for tally in endpoints.values():
                if tally.used:
                    yield tally
