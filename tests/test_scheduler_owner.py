"""The scheduler's owner task against recording fakes: no processes, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from config_builder import entry, make_config
from net import eventually
from slm_server.scheduler import decide
from slm_server.scheduler import owner as owner_module
from slm_server.scheduler.decisions import RefuseReason
from slm_server.scheduler.owner import Scheduler
from slm_server.scheduler.waiters import Refused, Waiter
from slm_server.supervisor import BackendProcess

GB = 10**9


class FakeProcess:
    """A backend that starts and stops at once, recording what it was told."""

    def __init__(self, role: str, state: str = "stopped") -> None:
        self.role = role
        self.state = state
        self.pid: int | None = 100 if state == "ready" else None
        self.generation = 1 if state == "ready" else 0
        self.retry_at: float | None = None
        self.reason: str | None = None
        self.on_change: Any = None
        self.told: list[str] = []

    def _set(self, state: str) -> None:
        self.state = state
        self.pid = 100 if state in ("starting", "ready") else None
        if self.on_change is not None:
            self.on_change()

    def load(self) -> None:
        self.told.append("load")
        self._set("starting")

    async def stop(self) -> None:
        self.told.append("stop")
        self._set("stopped")

    def forget_failure(self) -> None:
        pass


@dataclass
class FakeWork:
    open: bool = False
    watched: bool = False
    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0


@dataclass
class FakeMemory:
    needs: dict[str, int] = field(default_factory=dict)
    measured: dict[str, int] = field(default_factory=dict)

    def need(self, role: str) -> int | None:
        return self.needs.get(role, GB)

    def highest(self, role: str) -> int | None:
        return self.measured.get(role)


async def nothing_to_measure() -> None:
    pass


@pytest.fixture
def roles() -> Iterator[dict[str, FakeProcess]]:
    yield {"a": FakeProcess("a", "ready"), "c": FakeProcess("c")}


async def owner(
    processes: dict[str, FakeProcess],
    works: dict[str, FakeWork] | None = None,
    measure: Callable[[], Awaitable[None]] = nothing_to_measure,
    **limits: Any,
) -> Scheduler:
    # On demand: the fakes are in the state each test gives them, none started at launch.
    models = {
        role: entry(f"m-{role}", 9000 + i, on_demand=True) for i, role in enumerate(processes)
    }
    config = make_config(models)
    scheduler = Scheduler(
        config.models,
        cast(dict[str, BackendProcess], processes),
        works if works is not None else {role: FakeWork() for role in processes},
        FakeMemory(),
        measure,
        budget_bytes=limits.get("budget_bytes"),
        max_loaded=limits.get("max_loaded"),
        unload_grace_s=5,
        max_waiting=8,
    )
    await scheduler.start()
    return scheduler


async def granted(waiter: Waiter) -> None:
    await asyncio.wait_for(asyncio.shield(waiter.granted), 2)


async def test_a_granted_request_keeps_its_model_until_it_holds_a_slot(
    roles: dict[str, FakeProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="slm_server.scheduler")
    scheduler = await owner(roles, max_loaded=1)
    try:
        mine = scheduler.enqueue("a")  # a request for a, let in ...
        await granted(mine)
        other = scheduler.enqueue("c")  # ... and, before it takes its slot, one for c
        decided = ("evicted a", "c waits for memory")
        await eventually(
            lambda: any(m.startswith(decided) for m in caplog.messages), 2, "a decision for c"
        )
        assert roles["a"].told == [] and not other.granted.done()
        scheduler.leave(mine)  # it ran and ended: now c's turn comes
        await granted(other)
        assert roles["a"].told == ["stop"] and roles["c"].told == ["load"]
        scheduler.leave(other)
    finally:
        await scheduler.aclose()


async def test_a_model_plans_with_the_most_it_ever_took_even_when_stopped(
    roles: dict[str, FakeProcess],
) -> None:
    # c's files say 1 GB, but its last run took 3 GB: with a (1 GB) running, a budget of
    # 3.5 GB cannot hold both, so a must go first.
    scheduler = await owner(roles, budget_bytes=int(3.5 * GB))
    scheduler._memory.measured["c"] = 3 * GB  # type: ignore[attr-defined]
    try:
        waiter = scheduler.enqueue("c")
        await granted(waiter)
        assert roles["a"].told == ["stop"] and roles["c"].told == ["load"]
        scheduler.leave(waiter)
    finally:
        await scheduler.aclose()


async def test_a_failed_pass_is_logged_and_the_next_change_is_decided(
    roles: dict[str, FakeProcess], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_decide = decide
    failures = [RuntimeError("a bug in one pass")]

    def flaky(snapshot: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_decide(snapshot)

    monkeypatch.setattr("slm_server.scheduler.owner.decide", flaky)
    scheduler = await owner(roles)
    try:
        await eventually(lambda: "scheduler: a pass failed" in caplog.text, 2, "the failure")
        waiter = scheduler.enqueue("c")  # the owner is still there to decide it
        await granted(waiter)
        assert roles["c"].told == ["load"]
        scheduler.leave(waiter)
    finally:
        await scheduler.aclose()


async def test_a_ttl_that_cannot_act_yet_does_not_spin_the_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: list[float] = []
    real_decide = decide

    def counted(snapshot: Any) -> Any:
        passes.append(snapshot.now)
        return real_decide(snapshot)

    monkeypatch.setattr("slm_server.scheduler.owner.decide", counted)
    processes = {"a": FakeProcess("a", "ready")}
    models = {"a": entry("m-a", 9000, on_demand=True, idle_ttl_s=0.05)}
    scheduler = Scheduler(
        make_config(models).models,
        cast(dict[str, BackendProcess], processes),
        {"a": FakeWork()},
        FakeMemory(),
        nothing_to_measure,
        budget_bytes=None,
        max_loaded=None,
        unload_grace_s=5,
        max_waiting=8,
    )
    await scheduler.start()
    try:
        waiter = scheduler.enqueue("a")  # let in, not yet holding a slot: a is wanted
        await granted(waiter)
        await asyncio.sleep(0.1)  # a's TTL is past, but a request is on its way to it
        before = len(passes)
        await asyncio.sleep(0.5)
        assert len(passes) - before <= 2  # not a pass every 10 ms
        assert processes["a"].told == []
        scheduler.leave(waiter)
    finally:
        await scheduler.aclose()


async def test_an_unload_after_shutdown_began_returns_at_once(
    roles: dict[str, FakeProcess],
) -> None:
    scheduler = await owner(roles)
    await scheduler.aclose()
    await asyncio.wait_for(scheduler.unload("a"), 1)


async def test_a_replaced_role_starts_its_successor_only_once_the_old_one_drained(
    roles: dict[str, FakeProcess],
) -> None:
    old_work = FakeWork(in_flight=1)  # a stream still running on the old process
    scheduler = await owner(roles, {"a": old_work, "c": FakeWork()})
    try:
        successor, new_work = FakeProcess("a"), FakeWork()
        swaps: list[str] = []
        entry_a = make_config({"a": entry("m-a", 9100, on_demand=True)}).models["a"]
        replaced = scheduler.replace(
            "a", entry_a, cast(BackendProcess, successor), new_work, lambda: swaps.append("a")
        )
        waiting = scheduler.enqueue("a")  # a request arriving meanwhile
        await asyncio.sleep(0.05)  # a few passes of the owner
        assert roles["a"].told == [] and successor.told == [] and swaps == []
        assert not waiting.granted.done() and not new_work.open and not old_work.open
        old_work.in_flight = 0
        scheduler.wake()  # as the end of its last request does
        await asyncio.wait_for(replaced, 2)
        assert roles["a"].told == ["stop"] and swaps == ["a"]
        await granted(waiting)  # the waiting request starts the successor
        assert successor.told == ["load"] and new_work.open
        scheduler.leave(waiting)
    finally:
        await scheduler.aclose()


async def test_a_removed_role_refuses_its_requests_and_is_forgotten_once_stopped(
    roles: dict[str, FakeProcess],
) -> None:
    work = FakeWork(in_flight=1)
    scheduler = await owner(roles, {"a": work, "c": FakeWork()})
    try:
        forgotten: list[str] = []
        removed = scheduler.remove("a", lambda: forgotten.append("a"))
        with pytest.raises(Refused) as refused:
            scheduler.enqueue("a")
        assert refused.value.reason is RefuseReason.REMOVED
        await asyncio.sleep(0.05)  # a few passes of the owner
        assert not removed.done() and roles["a"].told == [] and forgotten == []
        work.in_flight = 0
        scheduler.wake()
        await asyncio.wait_for(removed, 2)
        assert roles["a"].told == ["stop"] and forgotten == ["a"]
    finally:
        await scheduler.aclose()


async def test_a_removed_role_refuses_later_requests_and_the_others_are_still_decided(
    roles: dict[str, FakeProcess],
) -> None:
    scheduler = await owner(roles)
    try:
        forgotten: list[str] = []
        # c is not running: it is forgotten at the next pass.
        await asyncio.wait_for(scheduler.remove("c", lambda: forgotten.append("c")), 2)
        assert forgotten == ["c"]
        # A call that looked c up before (the load half of a restart) comes too late.
        with pytest.raises(Refused) as refused:
            scheduler.enqueue("c", forced=True)
        assert refused.value.reason is RefuseReason.REMOVED
        assert str(refused.value) == "c was removed from the config by a reload"
        await scheduler.unload("c")  # nothing left to unload
        waiter = scheduler.enqueue("a")
        await granted(waiter)
        scheduler.leave(waiter)
    finally:
        await scheduler.aclose()


async def test_a_role_added_on_the_port_of_a_stopping_one_starts_once_that_one_stopped(
    roles: dict[str, FakeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[float] = []

    def counted(snapshot: Any) -> Any:
        passes.append(snapshot.now)
        return decide(snapshot)

    monkeypatch.setattr("slm_server.scheduler.owner.decide", counted)
    old_work = FakeWork(in_flight=1)  # a still drains a request
    scheduler = await owner(roles, {"a": old_work, "c": FakeWork()})
    try:
        removed = scheduler.remove("a", lambda: None)
        added, added_work = FakeProcess("n"), FakeWork()
        entry_n = make_config({"n": entry("m-n", 9000)}).models["n"]  # a's port, at launch
        scheduler.add("n", entry_n, cast(BackendProcess, added), added_work, after=("a",))
        assert scheduler.launch(["n"]) == {}  # neither started nor deferred: it waits
        waiting = scheduler.enqueue("n")
        seen = len(passes)
        await eventually(lambda: len(passes) > seen, 2, "a pass that saw n's request")
        assert added.told == [] and not waiting.granted.done()
        old_work.in_flight = 0
        scheduler.wake()  # as the end of its last request does
        await asyncio.wait_for(removed, 2)
        await granted(waiting)
        assert added.told == ["load"] and added_work.open
        scheduler.leave(waiting)
    finally:
        await scheduler.aclose()


async def test_a_budget_a_reload_sets_has_the_running_backends_measured(
    roles: dict[str, FakeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner_module, "SAMPLE_EVERY_S", 0.01)
    measured = asyncio.Event()

    async def measure() -> None:
        measured.set()

    scheduler = await owner(roles, measure=measure)  # no budget: nothing sampled
    try:
        measured.clear()  # the measurement at start-up
        scheduler.configure(budget_bytes=8 * GB, max_loaded=None, unload_grace_s=5, max_waiting=8)
        await asyncio.wait_for(measured.wait(), 2)
    finally:
        await scheduler.aclose()


async def test_a_reload_that_ends_during_the_shutdown_starts_nothing(
    roles: dict[str, FakeProcess],
) -> None:
    scheduler = await owner(roles)
    await scheduler.aclose()
    added = FakeProcess("n")
    entry_n = make_config({"n": entry("m-n", 9100)}).models["n"]  # started at launch
    scheduler.add("n", entry_n, cast(BackendProcess, added), FakeWork())
    assert scheduler.launch(["n"]) == {}
    assert added.told == []
