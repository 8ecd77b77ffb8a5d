"""What the scheduling policy sees: one frozen snapshot of every role and every waiting demand.

The owner task builds a snapshot from the supervisor, the admission queues and the memory
meter, asks the policy, and applies its decisions; the policy itself reads nothing else.
Times are monotonic seconds; memory is in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    """Where a role's backend is in its life, as its supervisor reports it."""

    UNLOADED = "unloaded"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


# A process exists and holds memory (a stopping one until it is gone): these count against
# the budget and against max_loaded_models.
RESIDENT = frozenset({Phase.STARTING, Phase.READY, Phase.STOPPING})


@dataclass(frozen=True, slots=True)
class RoleState:
    """One role as the policy sees it.

    `last_used` is the later of the end of its last request and the moment it became ready
    (so a backend nobody used still ages toward its TTL); None only if it never ran.
    `retry_at` is set for FAILED: before it, demands are refused with a Retry-After.
    """

    role: str
    phase: Phase
    estimate_bytes: int
    measured_bytes: int | None = None
    pinned: bool = False
    idle_ttl_s: float | None = None
    in_flight: int = 0
    queued: int = 0
    last_used: float | None = None
    retry_at: float | None = None
    failure: str = ""

    @property
    def need_bytes(self) -> int:
        """The larger of the estimate and the highest measurement: a guess only grows."""
        if self.measured_bytes is None:
            return self.estimate_bytes
        return max(self.estimate_bytes, self.measured_bytes)

    @property
    def measured(self) -> bool:
        return self.measured_bytes is not None and self.measured_bytes >= self.estimate_bytes

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queued > 0

    @property
    def resident(self) -> bool:
        return self.phase in RESIDENT


@dataclass(frozen=True, slots=True)
class Demand:
    """A request (or a load call) waiting for its role; `seq` orders arrivals."""

    role: str
    seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one policy decision depends on. `demands` need not be sorted."""

    roles: tuple[RoleState, ...]
    demands: tuple[Demand, ...] = ()
    budget_bytes: int | None = None
    max_loaded_models: int | None = None
    now: float = 0.0
