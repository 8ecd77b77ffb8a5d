"""Admission control: at most N requests in flight per backend, a bounded FIFO queue."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from slm_server.router.errors import QueueFull

# What a client told to wait is asked to wait before trying again. Generation
# takes seconds, so a short fixed hint is as good as an estimate.
QUEUE_FULL_RETRY_AFTER_S = 1


class AdmissionGate:
    """Lets ``limit`` holders in at once; up to ``max_waiting`` more wait in arrival order.

    A released slot is handed straight to the oldest waiter, so a newcomer can
    never overtake a request that has been waiting (no barging).
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._max_waiting = max_waiting
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        """Running and waiting: what a balancer weighs."""
        return self._active + len(self._waiters)

    def set_max_waiting(self, max_waiting: int) -> None:
        """A new bound for the queue (router.max_queue reloaded); those waiting stay."""
        self._max_waiting = max_waiting

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for it; never waits."""
        if self._active < self._limit and not self._waiters:
            self._active += 1
            return True
        return False

    def check_room(self) -> None:
        """QueueFull if a request that cannot have a slot now could not wait for one either."""
        if len(self._waiters) >= self._max_waiting:
            raise QueueFull(
                f"{self._active} request(s) running and {len(self._waiters)} waiting "
                "for this model; try again shortly",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        self.check_room()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            elif granted in self._waiters:  # a release may have dropped it already
                self._waiters.remove(granted)
            raise

    def release(self) -> None:
        while self._waiters:
            granted = self._waiters.popleft()
            if not granted.done():
                granted.set_result(None)  # the slot moves over; _active is unchanged
                return
        self._active -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
