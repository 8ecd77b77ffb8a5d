"""A repeated measurement reduced to its median, with its spread kept in sight."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """Median of repeated runs and their min-max: a narrow range means a trustworthy median."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Figure:
        # NaN marks a run with nothing to measure (e.g. every stream failed).
        kept = [v for v in values if not math.isnan(v)]
        if not kept:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))

    @property
    def missing(self) -> bool:
        return self.runs == 0


def number(value: float, digits: int) -> str:
    """Thousands separators for large figures, ``digits`` decimals for small ones."""
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def with_spread(figure: Figure, digits: int) -> str:
    if figure.missing:
        return "-"
    if figure.runs == 1:
        return number(figure.median, digits)
    return (
        f"{number(figure.median, digits)} "
        f"[{number(figure.low, digits)}-{number(figure.high, digits)}]"
    )
