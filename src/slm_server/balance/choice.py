"""The strategies: which of the upstreams that may take a request gets it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slm_server.balance.settings import Strategy


@dataclass(frozen=True, slots=True)
class Upstream:
    """What the router knows of one upstream when a request arrives.

    `healthy` is whether it is up at all (its process runs, its health check answers);
    failures seen by requests are the balancer's own business (see cooldown.py).
    """

    id: str
    in_flight: int = 0
    healthy: bool = True


def in_turn(eligible: Sequence[int], count: int, cursor: int) -> list[int]:
    """`eligible` (indices into a list of `count`) in round-robin order from `cursor`."""
    return sorted(eligible, key=lambda index: (index - cursor) % count)


def choose(
    upstreams: Sequence[Upstream], eligible: Sequence[int], strategy: Strategy, cursor: int
) -> int:
    """The index of the upstream that gets the request, among the `eligible` indices.

    Round robin takes the first eligible one at or after `cursor`; least busy the one with
    the fewest requests in flight, ties taking turns the same way (so that equally idle
    upstreams share the work rather than the first one taking it all). The caller moves
    its cursor past the chosen one.
    """
    if not eligible:
        raise ValueError("no eligible upstream to choose from")
    order = in_turn(eligible, len(upstreams), cursor)
    if strategy is Strategy.ROUND_ROBIN:
        return order[0]
    return min(order, key=lambda index: upstreams[index].in_flight)  # first of the least
