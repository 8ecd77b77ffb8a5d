"""The scheduling policy: a pure function from a snapshot to decisions.

Rules, in the order they apply:
- An idle backend (nothing in flight, queued or waiting for it) whose `last_used` is at
  least `idle_ttl_s` old is stopped. Never one with work.
- Demands are taken in arrival order. A model that can never fit (its need exceeds the
  budget less every pinned entry's need, or the pinned entries take every place under
  max_loaded_models) is refused at once; so is a failed one before its retry time.
- A demand for a ready model is served at once, unless that model is held (below).
- A demand for a model that is not running starts it if it fits now. Otherwise the first
  such demand is the head of the line: idle unpinned backends are stopped for it, least
  recently used first and only as many as needed; if that is not enough it waits for busy
  ones to drain, and every backend in its plan is held (no new requests) until they have,
  so a steady stream to them cannot starve it. Every later demand that needs a start waits
  behind the head, even one that would fit, since it would take room the head is owed.
- A stopping backend holds its memory and its place under max_loaded_models until it is
  gone: counting it avoids a start that overlaps the stop and briefly exceeds both.
- Memory is always recounted from the snapshot, so a backend that grew past its estimate
  makes the next start make room first.

Applying the decisions and asking again gives no new start or stop: `decide` acts only on
what the snapshot shows, and a started or stopping role no longer asks for either.
"""

from __future__ import annotations

from slm_server.scheduler.decisions import (
    Decision,
    Hold,
    Refuse,
    RefuseReason,
    Start,
    Stop,
    StopReason,
    Wait,
    gigabytes,
    idle_for,
    memory_note,
)
from slm_server.scheduler.room import draining_work, eviction_order, plan, usage
from slm_server.scheduler.state import Demand, Phase, RoleState, Snapshot


def ttl_expired(state: RoleState, now: float) -> bool:
    return (
        state.phase is Phase.READY
        and not state.pinned
        and not state.busy
        and state.idle_ttl_s is not None
        and state.last_used is not None
        and state.last_used + state.idle_ttl_s <= now
    )


def never_fits(state: RoleState, snapshot: Snapshot) -> str | None:
    """Why `state` could not load even with every unpinned backend stopped, or None."""
    pinned = [s for s in snapshot.roles if s.pinned and s.role != state.role]
    held = sum(s.need_bytes for s in pinned)
    budget = snapshot.budget_bytes
    if budget is not None and state.need_bytes > budget - held:
        return (
            f"{state.role} needs {memory_note(state)}, more than the memory budget of "
            f"{gigabytes(budget)} less {gigabytes(held)} for pinned entries: it can never load"
        )
    cap = snapshot.max_loaded_models
    if cap is not None and len(pinned) + 1 > cap:
        return (
            f"{state.role} can never load: max_loaded_models is {cap} and "
            f"{len(pinned)} pinned entries take every place"
        )
    return None


def refusal(state: RoleState, snapshot: Snapshot) -> Refuse | None:
    reason = never_fits(state, snapshot)
    if reason is not None:
        return Refuse(state.role, RefuseReason.CANNOT_FIT, reason)
    if state.phase is Phase.FAILED and state.retry_at is not None:
        wait = state.retry_at - snapshot.now
        if wait > 0:
            message = f"{state.role} failed to start ({state.failure or 'no reason given'}); "
            message += f"next try in {wait:.0f} s"
            return Refuse(state.role, RefuseReason.FAILED, message, retry_after_s=wait)
    return None


def decide(snapshot: Snapshot) -> tuple[Decision, ...]:
    """The decisions for this snapshot; the same snapshot always gives the same ones."""
    run = Pass(snapshot)
    run.expire_idle()
    for demand in sorted(snapshot.demands, key=lambda d: (d.seq, d.role)):
        run.take(demand)
    return tuple(run.decisions)


class Pass:
    """One walk over a snapshot, tracking what its own decisions change as it goes."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.states = {state.role: state for state in snapshot.roles}
        self.resident = {role: s for role, s in sorted(self.states.items()) if s.resident}
        self.stopping = {role for role, s in self.resident.items() if s.phase is Phase.STOPPING}
        self.demanded = {demand.role for demand in snapshot.demands}
        self.served: set[str] = set()  # roles whose demand is settled: they are about to work
        self.held: set[str] = set()
        self.refused: set[str] = set()
        self.head: str | None = None  # the first demand that waits for room
        self.decisions: list[Decision] = []

    def expire_idle(self) -> None:
        now = self.snapshot.now
        for role, state in self.resident.items():
            if role not in self.demanded and ttl_expired(state, now):
                note = f"{idle_for(state, now)}, idle_ttl_s {state.idle_ttl_s:g}"
                message = f"stopped {role} ({note}, {memory_note(state)})"
                self.decisions.append(Stop(role, StopReason.IDLE_TTL, message))
                self.stopping.add(role)

    def take(self, demand: Demand) -> None:
        state = self.states.get(demand.role)
        if state is None or demand.role in self.served or demand.role in self.refused:
            return
        if demand.role in self.held:
            return  # behind the head, whose turn comes first
        # A backend stopped in this pass (for the head, or its TTL) serves no one: a demand
        # for it needs a start again, behind the head.
        if state.phase in (Phase.READY, Phase.STARTING) and state.role not in self.stopping:
            self.served.add(state.role)
            return
        refuse = refusal(state, self.snapshot)  # only a start can be refused: a running
        if refuse is not None:  # model that grew keeps serving, and makes room later
            self.decisions.append(refuse)
            self.refused.add(state.role)
            return
        self.served.add(state.role)  # later demands for the same role ride on this one
        if self.head is not None:
            self.decisions.append(Wait(state.role, (self.head,)))
            return
        budget, cap = self.snapshot.budget_bytes, self.snapshot.max_loaded_models
        now_used = usage(self.resident, self.stopping)
        if state.phase is not Phase.STOPPING and now_used.fits_now(state.need_bytes, budget, cap):
            self.decisions.append(
                Start(state.role, f"starting {state.role} ({memory_note(state)})")
            )
            self.resident[state.role] = state
            return
        self.head = state.role
        self.make_room(state, demand.seq)

    def make_room(self, state: RoleState, seq: int) -> None:
        """Stop what the head needs gone if all of it is idle; else hold it until it is."""
        budget, cap = self.snapshot.budget_bytes, self.snapshot.max_loaded_models
        # Only demands that arrived before the head's protect a backend (they were walked
        # first); a later one waits for the head's turn, like any other.
        claimed = self.served - {state.role}
        order = eviction_order(self.resident, self.stopping, claimed)
        now_used = usage(self.resident, self.stopping)
        chosen = plan(state.need_bytes, budget, cap, now_used, order)
        if chosen is None:  # only pinned backends would be left, which never_fits rules out
            self.decisions.append(Wait(state.role, tuple(self.resident)))
            return
        draining = tuple(s.role for s in chosen if draining_work(s, claimed))
        if draining:
            for victim in chosen:
                self.decisions.append(Hold(victim.role, state.role, seq))
                self.held.add(victim.role)
            self.decisions.append(Wait(state.role, draining + tuple(sorted(self.stopping))))
            return
        now = self.snapshot.now
        for victim in chosen:
            note = f"{idle_for(victim, now)}, {memory_note(victim)}"
            message = f"evicted {victim.role} ({note}) to make room for "
            message += f"{state.role} ({memory_note(state)})"
            self.decisions.append(Stop(victim.role, StopReason.MAKE_ROOM, message, state.role))
            self.stopping.add(victim.role)
        self.decisions.append(Wait(state.role, tuple(sorted(self.stopping))))
