"""A histogram kept as plain Python numbers, for the request path.

prometheus_client's own Histogram takes a lock and searches its buckets in Python on
each observation; this one is an index found by ``bisect`` (in C) and two additions.
The exposition library still writes it out, from ``buckets()`` at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

# Whole answers and first bytes of local models: a cached embedding in milliseconds, a
# long generation on a CPU in minutes.
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

# The router's own time on a request: tens of microseconds when all is well.
OVERHEAD_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive), their sum and number."""

    __slots__ = ("_counts", "bounds", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le=bound).
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, ``+Inf`` last, as the exposition format has them."""
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self._counts, strict=False):
            running += count
            cumulative.append((_bound_text(bound), running))
        cumulative.append(("+Inf", running + self._counts[-1]))
        return cumulative


def _bound_text(bound: float) -> str:
    # What prometheus_client writes for its own buckets: 0.005, 1.0, 300.0.
    return repr(float(bound))
