"""The strategies: which of the upstreams that may take a request gets it."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from slm_server.balance.settings import Strategy

# An enum's member read from its class is a lookup on each read (Python 3.11): this is
# read per request.
_ROUND_ROBIN = Strategy.ROUND_ROBIN


@dataclass(slots=True)
class Upstream:
    """What the router knows of one upstream when a request arrives.

    `healthy` is whether it is up at all (its process runs, its health check answers);
    failures seen by requests are the balancer's own business (see cooldown.py). The
    router may keep one per upstream and bring it up to date for each request.
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


def choose_untried(
    upstreams: Sequence[Upstream], tried: Collection[str], strategy: Strategy, cursor: int
) -> int | None:
    """`choose` among the healthy upstreams not in `tried`, all taken to be in rotation;
    None when there is none. The same answer in one pass in turn from the cursor, with no
    list made: this runs for every request while no upstream is out."""
    count = len(upstreams)
    if not count:
        return None
    order = turns(count)[cursor % count]
    if strategy is _ROUND_ROBIN:
        for index in order:
            upstream = upstreams[index]
            if upstream.healthy and upstream.id not in tried:
                return index
        return None
    best: int | None = None
    fewest = 0
    for index in order:
        upstream = upstreams[index]
        if upstream.healthy and upstream.id not in tried:
            in_flight = upstream.in_flight
            if best is None or in_flight < fewest:
                best, fewest = index, in_flight
    return best


@functools.cache
def turns(count: int) -> tuple[tuple[int, ...], ...]:
    """For each cursor in ``range(count)``, the indices of ``count`` upstreams in turn from
    it: worked out once per group size, not per request."""
    return tuple(tuple((start + i) % count for i in range(count)) for start in range(count))
