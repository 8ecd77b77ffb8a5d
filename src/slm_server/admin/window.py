"""Per-model figures over the last minutes, from samples of cumulative counts.

The request path only adds to running totals (router/metrics/tallies.py). A window's
figures are the differences between a sample taken now and the oldest sample kept within
the window, and its quantiles are interpolated from the differences of histogram buckets,
as Prometheus' ``histogram_quantile`` does. Pure: the caller supplies the clock readings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WINDOW_S = 300.0  # the dashboard's "last 5 minutes"
SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True)
class ModelCounts:
    """One model's running totals at one moment, summed over its endpoints.

    ``duration`` and ``first_byte`` are cumulative bucket counts, one per bound of
    ``bounds`` and a last one for +Inf (as the exposition format has them).
    """

    requests: int
    duration: tuple[int, ...]
    first_byte: tuple[int, ...]
    completion_tokens: int


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    models: Mapping[str, ModelCounts]


@dataclass(frozen=True)
class Figures:
    """One model's figures over ``span_s``; None where there was nothing to measure."""

    span_s: float
    requests_per_min: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttfb_p50_s: float | None
    ttfb_p95_s: float | None
    tokens_per_s: float | None


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[int]) -> float | None:
    """The ``q`` quantile (0 < q < 1) of observations in buckets with upper ``bounds``
    and ``cumulative`` counts (+Inf last); None without observations.

    Linear within the bucket the rank falls in, from the previous bound (0 for the first
    bucket); a rank in the +Inf bucket gives the highest finite bound, as Prometheus does.
    """
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if index >= len(bounds):
        return float(bounds[-1])
    lower = 0.0 if index == 0 else float(bounds[index - 1])
    below = 0 if index == 0 else cumulative[index - 1]
    in_bucket = cumulative[index] - below  # > 0: the rank is above the buckets before
    return lower + (float(bounds[index]) - lower) * (rank - below) / in_bucket


def difference(new: ModelCounts, old: ModelCounts | None) -> ModelCounts:
    """What was counted between ``old`` and ``new``: all of ``new`` when there is no
    ``old`` (a model added since) or a count went down (its tallies were made anew)."""
    if old is None or not _grew(new, old):
        return new
    return ModelCounts(
        requests=new.requests - old.requests,
        duration=_minus(new.duration, old.duration),
        first_byte=_minus(new.first_byte, old.first_byte),
        completion_tokens=new.completion_tokens - old.completion_tokens,
    )


def figures(counts: ModelCounts, bounds: Sequence[float], span_s: float) -> Figures:
    """The figures of what ``counts`` counted over ``span_s`` seconds."""
    measured = span_s > 0
    return Figures(
        span_s=span_s,
        requests_per_min=counts.requests / span_s * 60 if measured else None,
        latency_p50_s=quantile(0.5, bounds, counts.duration),
        latency_p95_s=quantile(0.95, bounds, counts.duration),
        ttfb_p50_s=quantile(0.5, bounds, counts.first_byte),
        ttfb_p95_s=quantile(0.95, bounds, counts.first_byte),
        tokens_per_s=counts.completion_tokens / span_s if measured else None,
    )


class Window:
    """The samples of the last ``length_s`` seconds, at least ``every_s`` apart.

    Bounded: at most ``length_s / every_s + 2`` samples are kept, whoever adds them.
    """

    def __init__(self, length_s: float = WINDOW_S, every_s: float = SAMPLE_EVERY_S) -> None:
        if length_s <= 0 or every_s <= 0:
            raise ValueError("the window and the time between samples must be positive")
        self.length_s = length_s
        self.every_s = every_s
        self._samples: deque[Sample] = deque(maxlen=int(length_s // every_s) + 2)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> bool:
        """Keep ``sample`` if the newest kept is ``every_s`` older (True if kept)."""
        if self._samples and sample.at - self._samples[-1].at < self.every_s:
            return False
        self._samples.append(sample)
        while self._samples[0].at < sample.at - self.length_s - self.every_s:
            self._samples.popleft()  # never the one just added: it is not that old
        return True

    def baseline(self, now: float) -> Sample | None:
        """The oldest sample no older than the window at ``now``; None if none is."""
        return next((s for s in self._samples if s.at >= now - self.length_s), None)

    def figures(self, now: Sample, bounds: Sequence[float]) -> dict[str, Figures]:
        """Each model of ``now``: its figures since the window's baseline (or over nothing,
        span 0, when no sample is kept within the window)."""
        base = self.baseline(now.at)
        span_s = 0.0 if base is None else max(0.0, now.at - base.at)
        result: dict[str, Figures] = {}
        for model, counts in now.models.items():
            if base is None:
                counted = _nothing(counts)
            else:
                counted = difference(counts, base.models.get(model))
            result[model] = figures(counted, bounds, span_s)
        return result


def _grew(new: ModelCounts, old: ModelCounts) -> bool:
    return (
        new.requests >= old.requests
        and new.completion_tokens >= old.completion_tokens
        and all(n >= o for n, o in zip(new.duration, old.duration, strict=True))
        and all(n >= o for n, o in zip(new.first_byte, old.first_byte, strict=True))
    )


def _minus(new: tuple[int, ...], old: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n - o for n, o in zip(new, old, strict=True))


def _nothing(counts: ModelCounts) -> ModelCounts:
    zeros = (0,) * len(counts.duration)
    return ModelCounts(0, zeros, (0,) * len(counts.first_byte), 0)
