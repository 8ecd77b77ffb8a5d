"""The one task that applies the policy's decisions, and the requests that wait for it.

A request whose backend is not open (not running, being stopped, or held for another
model's turn) enters as a waiter and awaits ``granted``; every change that could matter
(a waiter arriving or leaving, a backend's state changing, a request ending while someone
waits, a timer) wakes the owner, which takes a snapshot, asks the policy and applies the
answer in one step: no await lies between the snapshot and the decisions taking effect,
so no request can slip past a decision made without it.

``open`` on each role's workload is the fast path: while it is true a request goes
straight to its backend's slots without a word to the owner. It is true while the backend
runs (or starts) and is neither held nor being stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from slm_server.config import ModelEntry
from slm_server.scheduler.decisions import (
    Hold,
    Refuse,
    RefuseReason,
    Start,
    Stop,
    Wait,
    gigabytes,
)
from slm_server.scheduler.launch import LaunchPlan, launch_plan
from slm_server.scheduler.policy import decide
from slm_server.scheduler.roster import Roster, Successor, Workload
from slm_server.scheduler.state import Demand, Phase, RoleState, Snapshot
from slm_server.scheduler.waiters import Refused, Waiter, removed, shutting_down, wants
from slm_server.supervisor.process import BackendProcess

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 2.0  # how often running backends' memory is measured under a budget
_FIRST_MEASURE_S = 30.0  # working out every entry's need at launch (reads GGUF headers)

_PHASES = {
    "stopped": Phase.UNLOADED,
    "starting": Phase.STARTING,
    "ready": Phase.READY,
    "stopping": Phase.STOPPING,
    "failed": Phase.FAILED,
}


class Memory(Protocol):
    """Each role's memory: its need before a start, and the most it was ever measured at."""

    def need(self, role: str) -> int | None: ...

    def highest(self, role: str) -> int | None: ...


@dataclass
class _Unload:
    deadline: float
    done: list[asyncio.Future[None]] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        entries: Mapping[str, ModelEntry],
        processes: Mapping[str, BackendProcess],
        workloads: Mapping[str, Workload],
        memory: Memory,
        measure: Callable[[], Awaitable[None]],
        *,
        budget_bytes: int | None,
        max_loaded: int | None,
        unload_grace_s: float,
        max_waiting: int,
    ) -> None:
        # Its own maps: a config reload adds and removes roles through the methods below.
        self._roster = Roster(entries, processes, workloads)
        self._memory = memory
        self._measure = measure
        self.budget_bytes = budget_bytes
        self.max_loaded = max_loaded
        self._unload_grace_s = unload_grace_s
        self._max_waiting = max_waiting
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._unloading: dict[str, _Unload] = {}
        self._ready_at: dict[str, tuple[int, float]] = {}  # role -> (generation, when)
        self._said: dict[str, str] = {}  # the last wait line per role: said once
        self._tasks: list[asyncio.Task[None]] = []
        self._sampler: asyncio.Task[None] | None = None
        self._closed = False
        for role, process in processes.items():
            workloads[role].open = False  # until the owner's first pass says otherwise
            process.on_change = self.wake

    # -- what the router calls ---------------------------------------------------

    async def start(self) -> None:
        """Work out every entry's need, start those due at launch, then take over."""
        try:
            async with asyncio.timeout(_FIRST_MEASURE_S):
                await self._measure()
        except TimeoutError:
            log.warning(
                "memory needs not worked out within %gs; counted as 0 until measured",
                _FIRST_MEASURE_S,
            )
        roles = list(self._roster.processes)
        unknown = [role for role in roles if self._memory.need(role) is None]
        if self.budget_bytes is not None and unknown:
            log.warning(
                "memory needs of %s are unknown (command entries, or weights not on this "
                "machine): counted as "
                "0 GB until measured; set memory_gb to plan with them",
                ", ".join(unknown),
            )
        plan = self._launch(roles)
        for role, why in plan.deferred:
            log.warning("%s: not started at launch (%s); its first request starts it", role, why)
        on_demand = [role for role in roles if self._roster.entries[role].on_demand]
        if on_demand:
            log.info("on demand, started by their first request: %s", ", ".join(on_demand))
        if self.budget_bytes is not None:
            log.info("memory budget %s for the backends", gigabytes(self.budget_bytes))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._own(), name="scheduler"))
        self._start_sampler()

    async def aclose(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for waiter in self._waiters:
            if not waiter.granted.done():
                waiter.granted.set_exception(shutting_down())
        for unload in self._unloading.values():
            for done in unload.done:
                if not done.done():
                    done.set_result(None)
        self._roster.settle()  # the shutdown stops everything

    def wake(self) -> None:
        self._wake.set()

    def enqueue(self, role: str, *, forced: bool = False) -> Waiter:
        """A waiter for ``role``'s turn; call ``leave`` with it once done, whatever happened."""
        if self._closed:
            raise shutting_down()
        if not self._roster.takes(role):
            # Removed by a reload, perhaps while its caller awaited something else (the
            # unload half of a restart): a waiter for it would never be answered.
            raise removed(role)
        waiting = self.waiting(role)
        if waiting >= self._max_waiting and not forced:  # a load call is one, not a flood
            message = f"{waiting} requests already wait for {role} to start"
            raise Refused(RefuseReason.QUEUE_FULL, message)
        granted = asyncio.get_running_loop().create_future()
        waiter = Waiter(role, next(self._seq), granted, forced)
        self._waiters.append(waiter)
        self.wake()
        return waiter

    def leave(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
            self.wake()  # it may have been the head of the line
        if not waiter.granted.done():
            waiter.granted.cancel()
        elif not waiter.granted.cancelled():
            # Refused just as its request was cancelled: nobody awaits the answer any more,
            # and asyncio would log it as an exception never retrieved.
            waiter.granted.exception()

    async def unload(self, role: str) -> None:
        """Take no new requests for ``role``, let those in flight finish (up to the grace),
        stop it; return once it is stopped. Later requests start it again."""
        if self._closed or role not in self._roster.processes:
            return  # every backend is being stopped already, or it is gone
        await self._begin_unload(role, "on request")

    def _begin_unload(self, role: str, why: str) -> asyncio.Future[None]:
        """Close ``role`` to new requests and have it stopped once drained; the future is
        done once it is stopped."""
        unload = self._unloading.get(role)
        if unload is None:
            unload = _Unload(time.monotonic() + self._unload_grace_s)
            self._unloading[role] = unload
            work = self._roster.workloads[role]
            work.open = False
            work.watched = True  # its requests' ends let it stop sooner
            busy = work.in_flight + work.queued
            if self._roster.processes[role].state != "stopped":
                log.info("unloading %s %s (%d in flight)", role, why, busy)
        done = asyncio.get_running_loop().create_future()
        unload.done.append(done)
        self.wake()
        return done

    def waiting(self, role: str) -> int:
        """Requests (and load calls) for ``role`` waiting for it to start or for memory (not
        those let in, which wait in the backend's own queue if anywhere)."""
        return sum(1 for w in self._waiters if w.role == role and not w.granted.done())

    def idle_since(self, role: str) -> float | None:
        """Monotonic time ``role`` became idle, as its idle_ttl_s counts it (the later of its
        last request's end and its becoming ready); None while busy or not running."""
        process, work = self._roster.processes.get(role), self._roster.workloads.get(role)
        if process is None or work is None or process.state != "ready":
            return None
        if work.in_flight + work.queued or self.waiting(role):
            return None
        return self._idle_from(role)

    def _idle_from(self, role: str) -> float | None:
        """The later of ``role``'s last request's end and this run's becoming ready."""
        process = self._roster.processes[role]
        last_used = self._roster.workloads[role].last_used
        ready = self._ready_at.get(role)
        if process.state != "ready" or ready is None or ready[0] != process.generation:
            return last_used
        return ready[1] if last_used is None else max(last_used, ready[1])

    def launch(self, roles: Sequence[str]) -> dict[str, str]:
        """Start those of ``roles`` that are stopped and not on demand, as at launch, in the
        room the running backends leave; the others start with their first request. Those
        left stopped for want of room, and why."""
        plan = self._launch(roles)
        for role in plan.start:
            log.info("starting %s", role)
        for role, why in plan.deferred:
            log.warning("%s: not started yet (%s); its first request starts it", role, why)
        return dict(plan.deferred)

    def _launch(self, roles: Sequence[str]) -> LaunchPlan:
        """Start those of ``roles`` due to start and free to (no other backend must stop
        first), in config order while they fit beside the backends running."""
        if self._closed:  # a reload that ends during the shutdown starts nothing
            return LaunchPlan((), ())
        now = time.monotonic()
        roster = self._roster
        states = [self._state(role, now) for role in roster.processes]
        resident = [state for state in states if state.resident]
        candidates = [
            self._state(role, now)
            for role in roles
            if role in roster.processes
            and not roster.entries[role].on_demand
            and not roster.blocked(role)
            and roster.processes[role].state == "stopped"
        ]
        plan = launch_plan(candidates, self.budget_bytes, self.max_loaded, resident)
        for role in plan.start:
            roster.processes[role].load()
        self.wake()
        return plan

    # -- what a config reload calls (the bookkeeping is the roster's) -----------------

    def configure(
        self,
        *,
        budget_bytes: int | None,
        max_loaded: int | None,
        unload_grace_s: float,
        max_waiting: int,
    ) -> None:
        """New limits, in force from the next decision on."""
        self.budget_bytes = budget_bytes
        self.max_loaded = max_loaded
        self._unload_grace_s = unload_grace_s
        self._max_waiting = max_waiting
        self._start_sampler()  # a budget set now is planned with measurements, as at launch
        self.wake()

    def add(
        self,
        role: str,
        entry: ModelEntry,
        process: BackendProcess,
        work: Workload,
        after: Collection[str] = (),
    ) -> None:
        """A new role, not running: its requests wait for a start (see ``launch``), which
        waits for the roles ``after`` (being removed or replaced) to stop first."""
        self._roster.add(role, entry, process, work, after)
        work.open = False
        process.on_change = self.wake
        self.wake()

    def update(self, role: str, entry: ModelEntry) -> None:
        """``role``'s entry with new router-side fields (TTL, pinning...); it keeps running."""
        self._roster.update(role, entry)
        self.wake()

    def remove(self, role: str, forgotten: Callable[[], None]) -> asyncio.Future[None]:
        """Refuse ``role``'s waiting requests, let those in flight finish (up to the grace),
        stop it, and forget it, calling ``forgotten`` in the same step; the future is done
        once it is."""
        self._roster.remove(role, forgotten)
        for waiter in self._waiters:
            if waiter.role == role and not waiter.granted.done():
                waiter.granted.set_exception(removed(role))
        if self._closed:  # the shutdown stops it
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._begin_unload(role, "(removed from the config)")

    def replace(
        self,
        role: str,
        entry: ModelEntry,
        process: BackendProcess,
        work: Workload,
        swapped: Callable[[], None],
        after: Collection[str] = (),
    ) -> asyncio.Future[None]:
        """Drain and stop ``role``'s backend, then put ``process`` in its place, calling
        ``swapped`` in the same step; the future is done once it is in place. Requests for
        ``role`` meanwhile wait on ``work`` (closed until then), as for a loading backend.
        The new backend starts once the roles ``after`` have stopped too."""
        done = asyncio.get_running_loop().create_future()
        work.open = False
        process.on_change = self.wake
        if self._closed:
            done.set_result(None)
            return done
        self._roster.replace(role, Successor(entry, process, work, swapped, done), after)
        self._begin_unload(role, "to start it with its new config")
        return done

    def _take_over(self, role: str) -> None:
        """``role`` is stopped: the roster forgets it or puts its successor in its place;
        start what waited for it."""
        replaced = role in self._roster.successors
        forgotten = role in self._roster.removing
        freed = self._roster.stopped(role)
        if replaced or forgotten:
            self._ready_at.pop(role, None)
            self._said.pop(role, None)
        if replaced:
            log.info("%s: stopped; its new config takes over", role)
        if freed:
            self.launch(freed)

    # -- the owner -----------------------------------------------------------------

    async def _own(self) -> None:
        while True:
            try:
                self._pass()
            except Exception:  # a bug: one pass lost, not the scheduler (requests would hang)
                log.exception("scheduler: a pass failed; trying again at the next change")
            delay = self._next_timer()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    def _start_sampler(self) -> None:
        """Measure the running backends' memory every few seconds while there is a budget
        (measurements matter only against one); after ``start``, as a reload may set one."""
        running = self._sampler is not None and not self._sampler.done()
        if self.budget_bytes is None or running or self._closed or not self._tasks:
            return
        self._sampler = asyncio.get_running_loop().create_task(
            self._sample(), name="memory sampler"
        )
        self._tasks.append(self._sampler)

    async def _sample(self) -> None:
        while self.budget_bytes is not None:  # a reload that drops the budget ends it
            await asyncio.sleep(SAMPLE_EVERY_S)
            if any(process.pid is not None for process in self._roster.processes.values()):
                try:
                    await self._measure()
                except Exception:  # a bug, or /proc unreadable: the last figures stand
                    log.exception("scheduler: measuring the backends' memory failed")
                self.wake()

    def _pass(self) -> None:
        """One snapshot, its decisions applied, every waiter and fast path updated."""
        now = time.monotonic()
        self._progress_unloads(now)
        # A role being replaced asks for nothing until its new backend is in place: a
        # start now would be the old one's.
        wanting = [w for w in self._waiters if wants(w) and not self._roster.blocked(w.role)]
        forced = {w.role for w in wanting if w.forced}
        snapshot = Snapshot(
            roles=tuple(self._state(role, now, role in forced) for role in self._roster.processes),
            demands=tuple(Demand(w.role, w.seq) for w in wanting),
            budget_bytes=self.budget_bytes,
            max_loaded_models=self.max_loaded,
            now=now,
        )
        held: dict[str, int] = {}
        refused: dict[str, Refuse] = {}
        watched = set(self._unloading)  # roles whose requests' ends may let a decision change
        for decision in decide(snapshot):
            if isinstance(decision, Start):
                log.info("%s", decision.message)
                self._roster.processes[decision.role].load()
            elif isinstance(decision, Stop):
                log.info("%s", decision.message)
                self._stop(decision.role)
            elif isinstance(decision, Hold):
                held[decision.role] = decision.after_seq
                watched.add(decision.role)
                self._say(
                    decision.role,
                    f"{decision.role}: new requests wait for {decision.for_role} to have its turn",
                )
            elif isinstance(decision, Wait):
                watched.update(decision.blocked_by)
                self._say(
                    decision.role,
                    f"{decision.role} waits for memory: "
                    f"{', '.join(decision.blocked_by)} must finish or stop first",
                )
            else:
                refused[decision.role] = decision
        self._answer_waiters(held, refused)
        for role, work in self._roster.workloads.items():
            work.open = self._admits(role) and role not in held
            work.watched = role in watched

    def _answer_waiters(self, held: Mapping[str, int], refused: Mapping[str, Refuse]) -> None:
        for waiter in self._waiters:
            if waiter.granted.done():
                continue
            refusal = refused.get(waiter.role)
            if not self._roster.takes(waiter.role):  # no longer configured: never admitted
                waiter.granted.set_exception(removed(waiter.role))
            elif refusal is not None:
                error = Refused(refusal.reason, refusal.message, refusal.retry_after_s)
                waiter.granted.set_exception(error)
            elif self._admits(waiter.role) and waiter.seq <= held.get(waiter.role, waiter.seq):
                waiter.granted.set_result(None)
                self._said.pop(waiter.role, None)

    def _admits(self, role: str) -> bool:
        running = self._roster.processes[role].state in ("ready", "starting")
        return running and role not in self._stopping and role not in self._unloading

    def _say(self, role: str, line: str) -> None:
        if self._said.get(role) != line:
            self._said[role] = line
            log.info("%s", line)

    def _stop(self, role: str) -> None:
        self._roster.workloads[role].open = False
        task = asyncio.get_running_loop().create_task(
            self._roster.processes[role].stop(), name=f"stopping {role}"
        )
        self._stopping[role] = task

        def stopped(_: asyncio.Task[None]) -> None:
            if self._stopping.get(role) is task:
                del self._stopping[role]
            self.wake()

        task.add_done_callback(stopped)

    def _progress_unloads(self, now: float) -> None:
        for role, unload in list(self._unloading.items()):
            if role in self._stopping:
                continue
            process, work = self._roster.processes[role], self._roster.workloads[role]
            process.forget_failure()
            if process.state == "stopped":
                del self._unloading[role]
                for done in unload.done:
                    if not done.done():
                        done.set_result(None)
                log.info("unloaded %s", role)
                self._take_over(role)
            elif work.in_flight + work.queued == 0 or now >= unload.deadline:
                if work.in_flight + work.queued:
                    log.warning(
                        "%s: %d request(s) still running after the grace of %gs; stopping it",
                        role,
                        work.in_flight + work.queued,
                        self._unload_grace_s,
                    )
                self._stop(role)

    def _state(self, role: str, now: float, forced: bool = False) -> RoleState:
        """``role`` as the policy sees it; ``forced``: a load call waits for it, so a failed
        backend may start at once."""
        roster = self._roster
        process, work, entry = roster.processes[role], roster.workloads[role], roster.entries[role]
        phase = _PHASES[process.state]
        if role in self._stopping or role in self._unloading:
            phase = Phase.STOPPING
        if process.state == "ready":
            seen = self._ready_at.get(role)
            if seen is None or seen[0] != process.generation:
                self._ready_at[role] = (process.generation, now)
        return RoleState(
            role=role,
            phase=phase,
            estimate_bytes=self._memory.need(role) or 0,
            # The most it ever took, in any run: what it may take again once started.
            measured_bytes=self._memory.highest(role),
            pinned=entry.pinned,
            idle_ttl_s=entry.idle_ttl_s,
            in_flight=work.in_flight,
            queued=work.queued,
            last_used=self._idle_from(role),
            retry_at=None if forced else process.retry_at,
            failure=process.reason or "",
        )

    def _next_timer(self) -> float | None:
        """Seconds until something may be due without a wake: an idle TTL, an unload grace.

        Only times still ahead count. One already past was acted on by the pass just made,
        or is blocked by something whose end wakes the owner anyway (a stop under way, work
        in flight, a waiter): waking for it again would only spin.
        """
        now = time.monotonic()
        due = [u.deadline for role, u in self._unloading.items() if role not in self._stopping]
        for role, process in self._roster.processes.items():
            ttl = self._roster.entries[role].idle_ttl_s
            if ttl is None or process.state != "ready":
                continue
            work = self._roster.workloads[role]
            idle_from = self._idle_from(role)
            if work.in_flight + work.queued > 0 or idle_from is None:
                due.append(now + ttl)  # busy: it cannot expire before a full TTL from now
            else:
                due.append(idle_from + ttl)
        ahead = [when for when in due if when > now]
        if not ahead:
            return None
        return min(ahead) - now + 0.01
