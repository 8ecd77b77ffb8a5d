"""Each backend's load for ``/v1/backends/health`` and the scheduler: memory measured and
needed, requests in flight and queued, and when it was last used."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slm_server.router.routing import Backend
from slm_server.scheduler.budget import need_bytes
from slm_server.supervisor.memory import PeakMemory, tree_memory_bytes
from slm_server.supervisor.process import BackendProcess

_MB = 10**6  # decimal, like memory_gb and the budget (10^9 bytes), so the numbers agree

# How old a measurement may be before ``refresh`` asks for a new one. Under a memory
# budget the scheduler measures every 2 s anyway; without one, a scrape every few seconds
# would otherwise walk every backend's process tree each time.
MEASUREMENT_MAX_AGE_S = 5.0

log = logging.getLogger(__name__)


class LoadFigures:
    """Measures off the event loop, and remembers what does not change.

    The need before a start (``memory_gb``, else the estimate from the model's files) is
    worked out once per role; the memory of each running backend is measured on each
    call, in one thread, and the highest measurement of its process is what counts
    (memory grows as pages are touched, and what a backend once took it may take again).
    """

    def __init__(self, base_dir: Path) -> None:
        self._base_dir = base_dir
        # The requests waiting for a role to start or for memory (the scheduler's count);
        # None when this router starts nothing.
        self.waiting_to_start: Callable[[str], int] | None = None
        self._needs: dict[str, int | None] = {}
        self._peaks: dict[str, PeakMemory] = {}
        self._highest: dict[str, int] = {}  # over every run: what a start may take again
        # One measurement at a time: concurrent callers share it instead of each starting
        # a thread (a thread cannot be cancelled; a slow one must not pile up).
        self._measuring: asyncio.Future[dict[str, tuple[int, int | None]]] | None = None
        self._measured_at: float | None = None  # monotonic; when the last one was taken in
        self._refreshing: asyncio.Task[None] | None = None  # started by refresh

    def need(self, role: str) -> int | None:
        """The role's need before it is measured; None if unknown (or not worked out yet)."""
        return self._needs.get(role)

    def renew(self, role: str, need: int | None, *, measured_too: bool = True) -> None:
        """``role``'s new need after a config reload; ``measured_too``: it runs another
        model or another way, and what its earlier runs took no longer says anything."""
        self._needs[role] = need
        if measured_too:
            self._peaks.pop(role, None)
            self._highest.pop(role, None)

    def queued(self, role: str, backend: Backend) -> int:
        """Requests waiting for one of ``backend``'s slots, or for it to start."""
        waiting = backend.gate.waiting
        if self.waiting_to_start is not None:
            waiting += self.waiting_to_start(role)
        return waiting

    def highest(self, role: str) -> int | None:
        """The most ``role``'s backend was ever measured at, in any run."""
        return self._highest.get(role)

    def peak(self, role: str, pid: int | None) -> int | None:
        """The highest measurement of the process ``pid``; None when it is not running."""
        if pid is None:
            return None  # not running: it holds no memory, whatever it held before
        peak = self._peaks.get(role)
        return peak.record(pid, None) if peak is not None else None

    async def measure(
        self, backends: Mapping[str, Backend], processes: Mapping[str, BackendProcess]
    ) -> None:
        """Work out the needs not known yet and measure every running backend."""
        pids = {role: p.pid for role, p in processes.items() if p.pid is not None}
        if self._measuring is None or self._measuring.done():
            todo = {
                role: b
                for role, b in backends.items()
                if b.entry.enabled and role not in self._needs
            }
            self._measuring = asyncio.ensure_future(
                asyncio.to_thread(self._measure_in_thread, todo, dict(pids))
            )
        by_pid = await asyncio.shield(self._measuring)
        for role, (pid, size) in by_pid.items():
            if pids.get(role) == pid:  # a shared measurement may predate a restart
                self._peaks.setdefault(role, PeakMemory()).record(pid, size)
                if size is not None and size > self._highest.get(role, 0):
                    self._highest[role] = size
        self._measured_at = time.monotonic()

    def refresh(
        self,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        max_age_s: float = MEASUREMENT_MAX_AGE_S,
    ) -> bool:
        """Start a measurement in the background if the last one is older than
        ``max_age_s`` and none is under way (True if it did); never waits for it. For
        readers that must answer at once (/metrics): they serve the last figures meanwhile."""
        if self._refreshing is not None and not self._refreshing.done():
            return False
        measured_at = self._measured_at
        if measured_at is not None and time.monotonic() - measured_at < max_age_s:
            return False
        self._refreshing = asyncio.ensure_future(self.measure(backends, processes))
        self._refreshing.add_done_callback(_log_failure)
        return True

    async def measure_within(
        self,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        timeout_s: float,
    ) -> None:
        """``measure``, waiting at most ``timeout_s`` for it (then the last figures stand)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.measure(backends, processes)
        except TimeoutError:
            pass

    async def figures(
        self,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        timeout_s: float,
    ) -> dict[str, dict[str, Any]]:
        """Role -> memory_mb, memory_estimate_mb, in_flight, queued, last_used; the memory
        figures are those known within ``timeout_s``."""
        enabled = enabled_backends(backends)
        await self.measure_within(enabled, processes, timeout_s)
        report: dict[str, dict[str, Any]] = {}
        for role, backend in enabled.items():
            process = processes.get(role)
            report[role] = {
                "memory_mb": _mb(self.peak(role, process.pid if process else None)),
                "memory_estimate_mb": _mb(self._needs.get(role)),
                "in_flight": backend.gate.active,
                "queued": self.queued(role, backend),
                "last_used": unix_time(backend.last_used),
            }
        return report

    def _measure_in_thread(
        self, to_estimate: Mapping[str, Backend], pids: Mapping[str, int]
    ) -> dict[str, tuple[int, int | None]]:
        for role, backend in to_estimate.items():
            self._needs[role] = need_bytes(backend.entry, self._base_dir)
        return {role: (pid, tree_memory_bytes(pid)) for role, pid in pids.items()}


def enabled_backends(backends: Mapping[str, Backend]) -> dict[str, Backend]:
    """The backends this router serves (a disabled entry is configured, never run)."""
    return {role: b for role, b in backends.items() if b.entry.enabled}


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("measuring the backends' memory failed: %s", error)


def unix_time(monotonic_s: float | None) -> float | None:
    """A time kept on the monotonic clock (so a TTL never jumps with the wall clock), as
    the unix seconds a client reads."""
    if monotonic_s is None:
        return None
    return time.time() - (time.monotonic() - monotonic_s)


def _mb(size: int | None) -> int | None:
    return None if size is None else round(size / _MB)
