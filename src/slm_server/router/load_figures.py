"""Each backend's load for ``/v1/backends/health``: memory measured and estimated,
requests in flight and queued, and when it was last used."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slm_server.backends.memory_estimate import estimate_bytes
from slm_server.router.routing import Backend
from slm_server.supervisor.memory import PeakMemory, tree_memory_bytes
from slm_server.supervisor.process import BackendProcess

_MB = 1024 * 1024


class LoadFigures:
    """Measures on demand, off the event loop, and remembers what does not change.

    The estimate is worked out once per role (it reads the model's files); the memory
    of each running backend is measured on each call, in one thread, and the highest
    measurement of its process is what is reported (memory grows as pages are touched,
    and what a backend once took it may take again).
    """

    def __init__(self, base_dir: Path) -> None:
        self._base_dir = base_dir
        self._estimates: dict[str, int | None] = {}
        self._peaks: dict[str, PeakMemory] = {}
        # One measurement at a time: concurrent health calls share it instead of each
        # starting a thread (a thread cannot be cancelled; a slow one must not pile up).
        self._measuring: asyncio.Future[dict[str, tuple[int, int | None]]] | None = None

    async def figures(
        self,
        backends: Mapping[str, Backend],
        processes: Mapping[str, BackendProcess],
        timeout_s: float,
    ) -> dict[str, dict[str, Any]]:
        """Role -> memory_mb, memory_estimate_mb, in_flight, queued, last_used; the memory
        figures are null when not known within ``timeout_s``."""
        enabled = {role: b for role, b in backends.items() if b.entry.enabled}
        pids = {role: p.pid for role, p in processes.items() if p.pid is not None}
        measured: dict[str, int | None] = {}
        try:
            async with asyncio.timeout(timeout_s):
                by_pid = await self._measure(enabled, pids)
        except TimeoutError:
            pass
        else:  # a shared measurement may predate a restart: only the same process counts
            measured = {role: size for role, (pid, size) in by_pid.items() if pids.get(role) == pid}
        return {
            role: {
                "memory_mb": _mb(self._peak(role, pids.get(role), measured.get(role))),
                "memory_estimate_mb": _mb(self._estimates.get(role)),
                "in_flight": backend.gate.active,
                "queued": backend.gate.waiting,
                "last_used": backend.last_used,
            }
            for role, backend in enabled.items()
        }

    def _peak(self, role: str, pid: int | None, measured: int | None) -> int | None:
        if pid is None:
            return None  # not running: it holds no memory, whatever it held before
        return self._peaks.setdefault(role, PeakMemory()).record(pid, measured)

    async def _measure(
        self, backends: Mapping[str, Backend], pids: Mapping[str, int]
    ) -> dict[str, tuple[int, int | None]]:
        """Role -> (the PID measured, its tree's bytes)."""
        if self._measuring is None or self._measuring.done():
            todo = {r: b for r, b in backends.items() if r not in self._estimates}
            self._measuring = asyncio.ensure_future(
                asyncio.to_thread(self._measure_in_thread, todo, dict(pids))
            )
        return await asyncio.shield(self._measuring)

    def _measure_in_thread(
        self, to_estimate: Mapping[str, Backend], pids: Mapping[str, int]
    ) -> dict[str, tuple[int, int | None]]:
        for role, backend in to_estimate.items():
            self._estimates[role] = estimate_bytes(backend.entry, self._base_dir)
        return {role: (pid, tree_memory_bytes(pid)) for role, pid in pids.items()}


def _mb(size: int | None) -> int | None:
    return None if size is None else round(size / _MB)
