"""Which running backends must go so that one more fits: the eviction plan."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from slm_server.scheduler.state import Phase, RoleState


@dataclass(frozen=True, slots=True)
class Usage:
    """Memory and places held, counting a stopping backend until it is gone."""

    used_bytes: int
    loaded: int
    stopping_bytes: int
    stopping: int

    def fits(self, need: int, budget: int | None, cap: int | None, freed: int, gone: int) -> bool:
        """Would `need` fit once the stopping backends and `gone` more (freeing `freed`) end?"""
        memory_ok = budget is None or self.used_bytes - self.stopping_bytes - freed + need <= budget
        count_ok = cap is None or self.loaded - self.stopping - gone + 1 <= cap
        return memory_ok and count_ok

    def fits_now(self, need: int, budget: int | None, cap: int | None) -> bool:
        memory_ok = budget is None or self.used_bytes + need <= budget
        count_ok = cap is None or self.loaded + 1 <= cap
        return memory_ok and count_ok


def usage(resident: Mapping[str, RoleState], stopping: Collection[str]) -> Usage:
    gone = [resident[role] for role in stopping if role in resident]
    return Usage(
        used_bytes=sum(state.need_bytes for state in resident.values()),
        loaded=len(resident),
        stopping_bytes=sum(state.need_bytes for state in gone),
        stopping=len(gone),
    )


def draining_work(state: RoleState, busy: Collection[str]) -> bool:
    """Has work that must finish before it may stop: in flight, queued, about to be given
    some (`busy`: demanded or started in this pass), or still starting."""
    return state.busy or state.phase is Phase.STARTING or state.role in busy


def eviction_order(
    resident: Mapping[str, RoleState], stopping: Collection[str], busy: Collection[str]
) -> list[RoleState]:
    """Every backend that may be stopped to make room, in the order to take them.

    Idle ones first, least recently used first (never used counts as oldest). Busy ones
    (work in flight or queued, or still starting) come last, largest first, so that as few
    as possible must drain; their order uses nothing that changes while they drain, so the
    set a waiting demand is promised does not flip between passes. Pinned never appear.
    """
    idle: list[RoleState] = []
    draining: list[RoleState] = []
    for state in resident.values():
        if state.pinned or state.role in stopping:
            continue
        if draining_work(state, busy):
            draining.append(state)
        else:
            idle.append(state)
    idle.sort(key=lambda s: (-1.0 if s.last_used is None else s.last_used, s.role))
    draining.sort(key=lambda s: (-s.need_bytes, s.role))
    return idle + draining


def plan(
    need: int,
    budget: int | None,
    cap: int | None,
    now: Usage,
    order: list[RoleState],
) -> list[RoleState] | None:
    """The shortest prefix of `order` whose end lets `need` fit; None if even all do not."""
    freed = 0
    for taken, state in enumerate(order):
        if now.fits(need, budget, cap, freed, taken):
            return order[:taken]
        freed += state.need_bytes
    if now.fits(need, budget, cap, freed, len(order)):
        return order
    return None
