"""What the scheduling policy decides, each with the one log line that explains it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from slm_server.scheduler.state import RoleState


def gigabytes(n: int) -> str:
    """Two decimals, one where the second is 0: 0.25 GB, 2.04 GB, 9.3 GB, 10.0 GB (one
    decimal alone would print a need of 2.04 GB as equal to a budget of 2.0 GB)."""
    text = f"{n / 1e9:.2f}"
    return f"{text[:-1] if text.endswith('0') else text} GB"


def memory_note(state: RoleState) -> str:
    """`2.1 GB measured` or `est. 9.3 GB`: the log says which number a decision used
    (and what was measured, when the estimate is the larger: `est. 9.3 GB, 7.0 GB measured`)."""
    if state.measured:
        return f"{gigabytes(state.need_bytes)} measured"
    if state.measured_bytes is not None:
        return f"est. {gigabytes(state.need_bytes)}, {gigabytes(state.measured_bytes)} measured"
    return f"est. {gigabytes(state.need_bytes)}"


def idle_for(state: RoleState, now: float) -> str:
    if state.last_used is None:
        return "never used"
    return f"idle {now - state.last_used:.0f} s"


class StopReason(Enum):
    IDLE_TTL = "idle_ttl"
    MAKE_ROOM = "make_room"


class RefuseReason(Enum):
    CANNOT_FIT = "insufficient_memory"
    FAILED = "failed"
    # The owner's own, outside the policy: too many waiting already; the server stopping.
    QUEUE_FULL = "queue_full"
    SHUTTING_DOWN = "shutting_down"
    REMOVED = "removed"  # a config reload removed the role while its requests waited


@dataclass(frozen=True, slots=True)
class Start:
    role: str
    message: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop an idle backend. `for_role` is the demand it makes room for (MAKE_ROOM only)."""

    role: str
    reason: StopReason
    message: str
    for_role: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """`role` cannot start yet: it waits for `blocked_by` (busy or stopping roles, or, when
    an earlier demand is at the head of the line, that demand's role)."""

    role: str
    blocked_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Hold:
    """Admit no request for `role` that arrived after `after_seq`: its memory is promised to
    `for_role`, whose demand (number `after_seq`) came first. Work already in flight or queued
    finishes; later requests wait until `for_role` has had its turn."""

    role: str
    for_role: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer every waiting demand for `role` at once (503); `retry_after_s` for FAILED."""

    role: str
    reason: RefuseReason
    message: str
    retry_after_s: float | None = None


Decision = Start | Stop | Wait | Hold | Refuse
