"""A configured backend as the router sees it: one upstream server and its admission gate."""

from __future__ import annotations

from dataclasses import dataclass, field

from slm_server.backends.openai import Remote
from slm_server.balance import Balancer
from slm_server.config import ModelEntry
from slm_server.router.admission import AdmissionGate

UPSTREAM_HEADER = b"x-slm-upstream"


@dataclass
class Backend:
    """A configured backend as the router sees it: where it is and its admission gate."""

    role: str
    entry: ModelEntry
    gate: AdmissionGate = field(repr=False)
    last_used: float | None = None  # monotonic time the last request for it ended
    # False: requests ask the scheduler first (not running, being stopped, or held).
    open: bool = True
    # True: a request's end wakes the scheduler (someone waits for this backend to drain).
    watched: bool = False
    # Requests for it waiting for the scheduler's leave to run (a load, memory): its next
    # requests in flight, not yet in its gate.
    awaiting_turn: int = 0
    # A server slm_server does not start (backend: openai): how to reach it.
    remote: Remote | None = None
    # Why requests for it cannot be sent (an openai entry's key not set, say); None: they can.
    unusable: str | None = None
    # A server elsewhere: whether it was healthy at its last health probe (None: not yet
    # probed). The router sees no process of it, so probing is all it knows.
    probed_up: bool | None = None
    probed_at: float = 0.0  # when, on the event loop's clock
    # Its group's balancer (None: not balanced); the table sets it. Read for health, metrics.
    balancer: Balancer | None = field(default=None, repr=False)
    # Attempts sent to it by a balanced request, by outcome (see replicas.py).
    attempts: dict[str, int] = field(default_factory=dict, repr=False)
    # `x-slm-upstream: <group role>/<replica index>`, made once: it goes out with every answer.
    upstream_header: tuple[bytes, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.upstream_header = (UPSTREAM_HEADER, self.upstream_name.encode())

    @property
    def upstream_name(self) -> str:
        """``<group role>/<replica index>``, ``<role>/0`` for an entry with one upstream."""
        group, index = self.entry.replica_group, self.entry.replica
        if group is None or index is None:
            return f"{self.role}/0"
        return f"{group}/{index}"

    @property
    def in_flight(self) -> int:
        return self.gate.active

    @property
    def queued(self) -> int:
        return self.gate.waiting

    @property
    def label(self) -> str:
        if self.remote is not None:  # its URL, parsed once (a label is made per request)
            return f"'{self.role}' ({self.entry.id} at {self.remote.url})"
        if not self.entry.started_here:
            return f"'{self.role}' ({self.entry.id} at {self.entry.server_url})"
        return f"'{self.role}' ({self.entry.id} on port {self.entry.port})"

    def upstream_model(self, started: str | None) -> str | None:
        """The ``model`` its server is sent: ``started``, what the running process accepts
        (a server slm_server starts), or the entry's upstream_model (one it does not)."""
        return started if self.entry.started_here else self.entry.upstream_model
