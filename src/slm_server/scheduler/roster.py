"""The roles the scheduler decides for, and what a config reload changes in them.

A reload adds roles at once. A removed role stays until its backend has stopped (its
requests in flight finish first), then is forgotten. A replaced role's new backend waits
out of sight until the old one has stopped, then takes its place. A new backend whose
port or log file a backend being stopped still holds waits for that one too: started
at once, it would fail on a port in use (a role renamed, its port kept) and give up.

Plain bookkeeping, no waiting and no decisions: the owner (owner.py) calls these in its
steps, and starts what ``stopped`` frees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from slm_server.config import ModelEntry
from slm_server.supervisor.process import BackendProcess


class Workload(Protocol):
    """What the router knows of a role's requests, and the switches it obeys: ``open``
    (requests go straight to the backend) and ``watched`` (a request's end wakes the owner:
    someone waits for this role's work to drain)."""

    open: bool
    watched: bool
    last_used: float | None  # monotonic time its last request ended

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...


@dataclass
class Successor:
    """A role's new backend, waiting for the old one to drain and stop."""

    entry: ModelEntry
    process: BackendProcess
    workload: Workload
    swapped: Callable[[], None]  # told in the step that puts it in place
    done: asyncio.Future[None]


class Roster:
    """Each role's entry, backend process and workload, and the reload's changes under way."""

    def __init__(
        self,
        entries: Mapping[str, ModelEntry],
        processes: Mapping[str, BackendProcess],
        workloads: Mapping[str, Workload],
    ) -> None:
        self.entries = dict(entries)
        self.processes = dict(processes)
        self.workloads = dict(workloads)
        # Roles a reload removes, and whom to tell once they are gone.
        self.removing: dict[str, Callable[[], None]] = {}
        self.successors: dict[str, Successor] = {}  # role -> what takes over once stopped
        self._waits_for: dict[str, set[str]] = {}  # role -> roles whose stop it waits for

    def takes(self, role: str) -> bool:
        """Whether requests for ``role`` may wait for it: configured, and not being removed."""
        return role in self.processes and role not in self.removing

    def blocked(self, role: str) -> bool:
        """Whether ``role``'s backend must not start yet: it waits for others to stop."""
        return role in self.successors or role in self._waits_for

    def add(
        self,
        role: str,
        entry: ModelEntry,
        process: BackendProcess,
        work: Workload,
        after: Collection[str] = (),
    ) -> None:
        """A new role, stopped; it may start once the roles ``after`` (roles this same
        reload removes or replaces) have stopped."""
        self.entries[role] = entry
        self.processes[role] = process
        self.workloads[role] = work
        self._wait(role, after)

    def update(self, role: str, entry: ModelEntry) -> None:
        self.entries[role] = entry

    def remove(self, role: str, forgotten: Callable[[], None]) -> None:
        """Forget ``role`` once it has stopped, calling ``forgotten`` in the same step."""
        self.removing[role] = forgotten

    def replace(self, role: str, successor: Successor, after: Collection[str] = ()) -> None:
        """Put ``successor`` in ``role``'s place once its backend has stopped; it may start
        once the roles ``after`` have stopped too."""
        self.successors[role] = successor
        self._wait(role, after)

    def stopped(self, role: str) -> list[str]:
        """``role``'s backend has stopped: forget the role, or put its successor in its
        place. The roles whose backend may start now (they waited for this one)."""
        freed: list[str] = []
        forgotten = self.removing.pop(role, None)
        successor = self.successors.pop(role, None)
        if forgotten is not None:
            del self.entries[role], self.processes[role], self.workloads[role]
            self._waits_for.pop(role, None)
            forgotten()
        elif successor is not None:
            self.entries[role] = successor.entry
            self.processes[role] = successor.process
            self.workloads[role] = successor.workload
            successor.swapped()
            if not successor.done.done():
                successor.done.set_result(None)
            if role not in self._waits_for:
                freed.append(role)
        else:
            return freed  # an unload: the role stays as it is
        for other, blockers in list(self._waits_for.items()):
            blockers.discard(role)
            if not blockers:
                del self._waits_for[other]
                if other not in self.successors:
                    freed.append(other)
        return freed

    def settle(self) -> None:
        """The server is stopping, and stops every backend: no change waits any more."""
        for successor in self.successors.values():
            if not successor.done.done():
                successor.done.set_result(None)

    def _wait(self, role: str, after: Collection[str]) -> None:
        blockers = {other for other in after if other != role and other in self.processes}
        if blockers:
            self._waits_for[role] = blockers
