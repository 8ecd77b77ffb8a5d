"""One entry's balancing settings, with the defaults the config will give them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Strategy(Enum):
    LEAST_BUSY = "least_busy"  # fewest requests in flight; ties take turns
    ROUND_ROBIN = "round_robin"


class Affinity(Enum):
    SESSION = "session"  # same user, x-session-id or previous_response_id -> same upstream


@dataclass(frozen=True, slots=True)
class BalanceSettings:
    """How requests for one entry are spread over its upstreams and what happens on failure.

    `retries` more attempts on another upstream (or a fallback) per request;
    `cooldown_after` consecutive failures take an upstream out for `cooldown_s`, after
    which one probe request decides whether it comes back; `fallbacks` are other model
    ids tried, in order, when none of this entry's upstreams can take a request.
    """

    strategy: Strategy = Strategy.LEAST_BUSY
    affinity: Affinity | None = None
    retries: int = 1
    cooldown_after: int = 3
    cooldown_s: float = 30.0
    fallbacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.cooldown_after < 1:
            raise ValueError(f"cooldown_after must be 1 or more, not {self.cooldown_after}")
        if not self.cooldown_s >= 0:  # also refuses NaN
            raise ValueError(f"cooldown_s must be 0 or more, not {self.cooldown_s}")
