"""Which entries start at launch: those not on demand, in config order, while they fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slm_server.scheduler.decisions import gigabytes, memory_note
from slm_server.scheduler.state import RoleState


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    start: tuple[str, ...]
    deferred: tuple[tuple[str, str], ...]  # (role, why it waits for its first request)


def launch_plan(
    candidates: Sequence[RoleState],
    budget_bytes: int | None,
    max_loaded: int | None,
    resident: Sequence[RoleState] = (),
) -> LaunchPlan:
    """Start ``candidates`` (the entries not on demand, in config order) while they fit
    under the budget and the count beside the ``resident`` backends (running or starting);
    the rest start on their first request, when idle backends can make room for them.
    Pinned entries go first: they are never stopped, so an unpinned one started before
    them could leave them no room."""
    ordered = sorted(candidates, key=lambda state: not state.pinned)  # stable: config order
    start: list[str] = []
    deferred: list[tuple[str, str]] = []
    used = sum(state.need_bytes for state in resident)
    for state in ordered:
        if max_loaded is not None and len(resident) + len(start) >= max_loaded:
            deferred.append((state.role, f"max_loaded_models is {max_loaded}, all taken"))
        elif budget_bytes is not None and used + state.need_bytes > budget_bytes:
            why = f"{memory_note(state)} would exceed the memory budget of "
            why += f"{gigabytes(budget_bytes)} ({gigabytes(used)} taken)"
            deferred.append((state.role, why))
        else:
            start.append(state.role)
            used += state.need_bytes
    return LaunchPlan(tuple(start), tuple(deferred))
