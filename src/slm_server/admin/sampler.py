"""Samples of the router's request tallies for the dashboard's window.

Nothing here runs per request: a task reads the running totals every few seconds (and
each read of the dashboard's status reads them once more, for figures up to now).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from slm_server.admin.window import ModelCounts, Sample, Window
from slm_server.router.metrics.histogram import LATENCY_BUCKETS_S, Histogram
from slm_server.router.metrics.tallies import NO_MODEL, RequestTallies
from slm_server.router.routing import ENDPOINT_MODEL_TYPES

BOUNDS = LATENCY_BUCKETS_S  # of both the duration and the first-byte histograms


def sample_of(tallies: RequestTallies, at: float) -> Sample:
    """Each served model's running totals over its endpoints, at ``at``."""
    models: dict[str, ModelCounts] = {}
    for model in tallies.models:
        if model == NO_MODEL:
            continue
        requests = tokens = 0
        duration = [0] * (len(BOUNDS) + 1)
        first_byte = [0] * (len(BOUNDS) + 1)
        for endpoint in ENDPOINT_MODEL_TYPES:
            slot = tallies.slot(model, endpoint)
            if not slot.used:
                continue
            requests += slot.duration.count
            tokens += slot.completion_tokens
            _add_buckets(duration, slot.duration)
            _add_buckets(first_byte, slot.first_byte)
        models[model] = ModelCounts(requests, tuple(duration), tuple(first_byte), tokens)
    return Sample(at, models)


def _add_buckets(into: list[int], histogram: Histogram) -> None:
    for at, (_, cumulative) in enumerate(histogram.buckets()):
        into[at] += int(cumulative)


class Sampler:
    """Keeps ``window`` filled from the tallies ``tallies()`` gives (read anew each time:
    they may be replaced), once started, until closed."""

    def __init__(
        self,
        tallies: Callable[[], RequestTallies],
        window: Window,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tallies = tallies
        self.window = window
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.take()  # the window starts with the router

    def take(self) -> Sample:
        """A sample of now, kept in the window if the last kept one is old enough."""
        sample = sample_of(self._tallies(), self._clock())
        self.window.add(sample)
        return sample

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashboard sampler")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.window.every_s)  # a period, not a wait for an event
            self.take()
