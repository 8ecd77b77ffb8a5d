"""How long a request body may take to arrive: bounded for every body, from its start.

A body that never starts, stops part-way or trickles in keeps its bytes taken from the
body budget (see body_budget) for as long as it lasts; without a bound in time, a few
thousand such clients hold the whole budget and every other request gets 503.

One task watches the bodies being read, instead of a timer per body: the router reads
a small body on every request, and a timer (asyncio.timeout) there cost more than
the rest of reading it. Deadlines are kept to within a tick (a second at most), which
is nothing next to timeouts of tens of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

# How long a body may stop arriving before the request is ended: far longer than any
# pause of a live upload, short enough that a stalled one gives its bytes back.
BODY_IDLE_TIMEOUT_S = 30.0

# After the first idle timeout, a body must have arrived at this average rate at
# least (512 kbit/s, a poor mobile uplink): a client sending a byte now and then would
# otherwise keep its declared length taken for as long as it likes. The rate counts
# the bytes received, not those declared, so such a trickle ends once the grace is
# over, however large the body it announced.
BODY_MIN_RATE_BYTES_S = 64 * 1024


class BodyDeadlines:
    """Cancels the tasks reading bodies that ran out of time (see ``start``)."""

    __slots__ = ("_deadlines", "_expired", "_sweeper", "_tick_s", "idle_timeout_s", "min_rate")

    def __init__(
        self,
        idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        min_rate: float = BODY_MIN_RATE_BYTES_S,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.min_rate = min_rate
        self._tick_s = min(1.0, idle_timeout_s / 8)
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def start(self, task: asyncio.Task[object] | None = None) -> asyncio.Task[object]:
        """Watch ``task`` (default: the current one), which starts reading a body: it is
        cancelled unless ``stop`` comes within the idle timeout (or the deadline ``move``
        sets). The caller that knows its task already saves looking it up again."""
        if task is None:
            task = asyncio.current_task()
            assert task is not None  # called from a request's task
        self._deadlines[task] = time.monotonic() + self.idle_timeout_s
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return task

    def move(self, task: asyncio.Task[object], grace_ends: float, received: int) -> None:
        """A part of ``received`` bytes in all has come: the next deadline is the idle
        timeout from now, or earlier if the body is behind the minimum rate since
        ``grace_ends`` (its first deadline, ``first_deadline``)."""
        idle_ends = time.monotonic() + self.idle_timeout_s
        self._deadlines[task] = min(idle_ends, grace_ends + received / self.min_rate)

    def first_deadline(self, task: asyncio.Task[object]) -> float:
        return self._deadlines[task]

    def stop(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; whether it had run out of time (and was cancelled)."""
        if self._deadlines.pop(task, None) is not None:
            return False
        with contextlib.suppress(KeyError):
            self._expired.remove(task)
            return True
        return False

    async def _sweep(self) -> None:
        # It sleeps first and ends only after a tick with no body left to watch: a small
        # body is read whole before the sweeper's first step, so one that checked first
        # would end at once, to be started again (a task, and on Python 3.11 a getpid
        # system call to find the loop) by every request.
        try:
            while True:
                await asyncio.sleep(self._tick_s)
                if not self._deadlines:
                    return
                now = time.monotonic()
                late = [task for task, deadline in self._deadlines.items() if deadline <= now]
                for task in late:
                    del self._deadlines[task]
                    self._expired.add(task)
                    task.cancel()
        finally:
            self._sweeper = None
