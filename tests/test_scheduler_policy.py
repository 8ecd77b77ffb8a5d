"""The scheduling policy as tables: a snapshot in, the decisions out, no processes or sockets."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_server.scheduler import (
    Decision,
    Demand,
    Hold,
    Phase,
    Refuse,
    RefuseReason,
    RoleState,
    Snapshot,
    Start,
    Stop,
    StopReason,
    Wait,
    decide,
)

GB = 10**9
READY, STARTING, STOPPING = Phase.READY, Phase.STARTING, Phase.STOPPING
UNLOADED, FAILED = Phase.UNLOADED, Phase.FAILED


def role(
    name: str,
    phase: Phase = READY,
    gb: float = 1.0,
    *,
    measured_gb: float | None = None,
    pinned: bool = False,
    ttl: float | None = None,
    in_flight: int = 0,
    queued: int = 0,
    last_used: float | None = 0.0,
    retry_at: float | None = None,
) -> RoleState:
    return RoleState(
        role=name,
        phase=phase,
        estimate_bytes=int(gb * GB),
        measured_bytes=None if measured_gb is None else int(measured_gb * GB),
        pinned=pinned,
        idle_ttl_s=ttl,
        in_flight=in_flight,
        queued=queued,
        last_used=last_used if phase in (READY, STOPPING) else None,
        retry_at=retry_at,
        failure="exited with status 1" if phase is FAILED else "",
    )


def snap(
    *roles: RoleState,
    want: tuple[str, ...] = (),
    budget_gb: float | None = None,
    cap: int | None = None,
    now: float = 100.0,
) -> Snapshot:
    return Snapshot(
        roles=roles,
        demands=tuple(Demand(name, seq) for seq, name in enumerate(want, start=1)),
        budget_bytes=None if budget_gb is None else int(budget_gb * GB),
        max_loaded_models=cap,
        now=now,
    )


def brief(decision: Decision) -> str:
    """A decision as the tables spell it."""
    match decision:
        case Start(role=r):
            return f"start {r}"
        case Stop(role=r, reason=StopReason.IDLE_TTL):
            return f"stop {r} ttl"
        case Stop(role=r, for_role=f):
            return f"stop {r} for {f}"
        case Wait(role=r, blocked_by=b):
            return f"wait {r} on {','.join(b)}"
        case Hold(role=r, for_role=f, after_seq=n):
            return f"hold {r} for {f} after #{n}"
        case Refuse(role=r, reason=reason):
            return f"refuse {r} {reason.value}"
    raise AssertionError(decision)


CASES = {
    # starting on demand
    "starts-when-it-fits": (
        snap(role("chat", gb=2), role("coder", UNLOADED, 5), want=("coder",), budget_gb=10),
        ["start coder"],
    ),
    "no-budget-no-cap-always-starts": (
        snap(role("chat", gb=50), role("coder", UNLOADED, 50), want=("coder",)),
        ["start coder"],
    ),
    "a-ready-model-is-served-at-once": (
        snap(role("chat", in_flight=3), want=("chat",), budget_gb=1),
        [],
    ),
    "a-starting-model-is-not-started-twice": (
        snap(role("chat", STARTING), want=("chat", "chat"), budget_gb=10),
        [],
    ),
    "many-demands-for-one-model-start-it-once": (
        snap(role("coder", UNLOADED), want=("coder", "coder", "coder"), budget_gb=10),
        ["start coder"],
    ),
    "several-models-start-in-one-pass-while-they-fit": (
        snap(role("a", UNLOADED, 3), role("b", UNLOADED, 3), want=("a", "b"), budget_gb=10),
        ["start a", "start b"],
    ),
    "nothing-to-do-gives-nothing": (
        snap(role("chat", gb=8, measured_gb=12), role("coder", UNLOADED), budget_gb=10),
        [],
    ),
    # making room
    "evicts-the-least-recently-used-only-as-many-as-needed": (
        snap(
            role("old", gb=4, last_used=10),
            role("new", gb=4, last_used=50),
            role("coder", UNLOADED, 4),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop old for coder", "wait coder on old"],
    ),
    "a-backend-stopped-for-an-earlier-demand-serves-no-later-one": (
        snap(
            role("a", gb=6, last_used=1),
            role("b", UNLOADED, 6),
            want=("b", "a"),
            budget_gb=10,
        ),
        ["stop a for b", "wait b on a", "wait a on b"],
    ),
    "evicts-in-lru-order-until-it-fits": (
        snap(
            role("a", gb=1, last_used=5),
            role("b", gb=4, last_used=10),
            role("c", gb=4, last_used=50),
            role("coder", UNLOADED, 5),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop a for coder", "stop b for coder", "wait coder on a,b"],
    ),
    "never-used-counts-as-oldest": (
        snap(
            role("used", gb=4, last_used=1),
            role("unused", gb=4, last_used=None),
            role("coder", UNLOADED, 4),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop unused for coder", "wait coder on unused"],
    ),
    "pinned-is-never-evicted": (
        snap(
            role("embed", gb=4, pinned=True, last_used=1),
            role("chat", gb=4, last_used=50),
            role("coder", UNLOADED, 4),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop chat for coder", "wait coder on chat"],
    ),
    "work-in-flight-is-never-evicted-the-newcomer-waits": (
        snap(
            role("chat", gb=6, in_flight=1),
            role("coder", UNLOADED, 6),
            want=("coder",),
            budget_gb=10,
        ),
        ["hold chat for coder after #1", "wait coder on chat"],
    ),
    "queued-work-counts-as-work": (
        snap(
            role("chat", gb=6, queued=1), role("coder", UNLOADED, 6), want=("coder",), budget_gb=10
        ),
        ["hold chat for coder after #1", "wait coder on chat"],
    ),
    "idle-ones-in-the-plan-are-held-not-stopped-while-a-busy-one-drains": (
        snap(
            role("idle", gb=2, last_used=90),
            role("busy", gb=6, in_flight=2, last_used=1),
            role("coder", UNLOADED, 6),
            want=("coder",),
            budget_gb=10,
        ),
        ["hold idle for coder after #1", "hold busy for coder after #1", "wait coder on busy"],
    ),
    "a-model-just-demanded-is-busy-and-not-evicted": (
        snap(
            role("chat", gb=6, last_used=1),
            role("coder", UNLOADED, 6),
            want=("chat", "coder"),
            budget_gb=10,
        ),
        ["hold chat for coder after #2", "wait coder on chat"],
    ),
    "a-starting-model-is-not-evicted": (
        snap(role("chat", STARTING, 6), role("coder", UNLOADED, 6), want=("coder",), budget_gb=10),
        ["hold chat for coder after #1", "wait coder on chat"],
    ),
    # a stopping backend holds its memory and its place until it is gone
    "a-stopping-backend-still-holds-memory": (
        snap(role("chat", STOPPING, 6), role("coder", UNLOADED, 6), want=("coder",), budget_gb=10),
        ["wait coder on chat"],
    ),
    "a-stopping-backend-still-holds-its-place": (
        snap(role("a"), role("b", STOPPING), role("c", UNLOADED), want=("c",), cap=2),
        ["wait c on b"],
    ),
    "a-request-for-a-model-being-stopped-waits-for-the-stop-then-starts-it": (
        snap(role("chat", STOPPING, 6), want=("chat",), budget_gb=10),
        ["wait chat on chat"],
    ),
    # count cap
    "the-count-cap-evicts-the-lru": (
        snap(
            role("a", last_used=1), role("b", last_used=2), role("c", UNLOADED), want=("c",), cap=2
        ),
        ["stop a for c", "wait c on a"],
    ),
    "under-the-count-cap-it-starts": (
        snap(role("a"), role("c", UNLOADED), want=("c",), cap=2),
        ["start c"],
    ),
    # arrival order across models
    "a-later-demand-that-fits-does-not-jump-the-head": (
        snap(
            role("chat", gb=6, in_flight=1),
            role("coder", UNLOADED, 6),
            role("tiny", UNLOADED, 1),
            want=("coder", "tiny"),
            budget_gb=10,
        ),
        ["hold chat for coder after #1", "wait coder on chat", "wait tiny on coder"],
    ),
    "a-later-request-for-a-held-model-waits-behind-the-head": (
        snap(
            role("chat", gb=6, in_flight=1),
            role("coder", UNLOADED, 6),
            want=("coder", "chat"),
            budget_gb=10,
        ),
        ["hold chat for coder after #1", "wait coder on chat"],
    ),
    "a-ready-model-outside-the-plan-is-still-served": (
        snap(
            role("chat", gb=6, in_flight=1),
            role("embed", gb=1, pinned=True),
            role("coder", UNLOADED, 4),
            want=("coder", "embed"),
            budget_gb=10,
        ),
        ["hold chat for coder after #1", "wait coder on chat"],
    ),
    # can never fit
    "bigger-than-the-budget-is-refused-at-once": (
        snap(role("coder", UNLOADED, 12), want=("coder",), budget_gb=10),
        ["refuse coder insufficient_memory"],
    ),
    "bigger-than-the-budget-less-pinned-is-refused-even-if-pinned-is-not-running": (
        snap(
            role("embed", UNLOADED, 6, pinned=True),
            role("coder", UNLOADED, 5),
            want=("coder",),
            budget_gb=10,
        ),
        ["refuse coder insufficient_memory"],
    ),
    "exactly-the-budget-less-pinned-fits": (
        snap(
            role("embed", gb=6, pinned=True),
            role("coder", UNLOADED, 4),
            want=("coder",),
            budget_gb=10,
        ),
        ["start coder"],
    ),
    "pinned-taking-every-place-refuses-the-rest": (
        snap(role("embed", pinned=True), role("coder", UNLOADED), want=("coder",), cap=1),
        ["refuse coder insufficient_memory"],
    ),
    "a-refusal-does-not-block-the-line": (
        snap(
            role("huge", UNLOADED, 20),
            role("small", UNLOADED, 1),
            want=("huge", "small"),
            budget_gb=10,
        ),
        ["refuse huge insufficient_memory", "start small"],
    ),
    # a backend that grew beyond its estimate
    "a-running-model-that-grew-past-the-budget-keeps-serving": (
        snap(role("chat", gb=4, measured_gb=12), want=("chat",), budget_gb=10),
        [],
    ),
    "over-budget-by-growth-the-next-start-makes-room-first": (
        snap(
            role("chat", gb=4, measured_gb=7, last_used=58),
            role("embed", gb=3, last_used=90),
            role("coder", UNLOADED, 1),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop chat for coder", "wait coder on chat"],
    ),
    # idle TTL
    "an-idle-backend-past-its-ttl-is-stopped": (
        snap(role("chat", ttl=60, last_used=40)),
        ["stop chat ttl"],
    ),
    "not-yet-past-its-ttl-it-stays": (
        snap(role("chat", ttl=60, last_used=41)),
        [],
    ),
    "a-ttl-never-stops-work-in-flight": (
        snap(role("chat", ttl=60, last_used=0, in_flight=1)),
        [],
    ),
    "a-ttl-that-expires-while-a-request-arrives-keeps-the-backend": (
        snap(role("chat", ttl=60, last_used=0), want=("chat",)),
        [],
    ),
    "a-ttl-stop-frees-room-for-a-start": (
        snap(
            role("chat", gb=6, ttl=60, last_used=0),
            role("coder", UNLOADED, 6),
            want=("coder",),
            budget_gb=10,
        ),
        ["stop chat ttl", "wait coder on chat"],
    ),
    # failed
    "failed-before-its-retry-time-is-refused-with-retry-after": (
        snap(role("coder", FAILED, retry_at=130), want=("coder",)),
        ["refuse coder failed"],
    ),
    "failed-after-its-retry-time-is-started-again": (
        snap(role("coder", FAILED, retry_at=100), want=("coder",)),
        ["start coder"],
    ),
}


@pytest.mark.parametrize(("snapshot", "expected"), CASES.values(), ids=CASES.keys())
def test_policy_table(snapshot: Snapshot, expected: list[str]) -> None:
    assert [brief(d) for d in decide(snapshot)] == expected


def applied(snapshot: Snapshot, decisions: tuple[Decision, ...]) -> Snapshot:
    """The snapshot after an owner carried the decisions out (before any of them completed)."""
    phases = {d.role: STARTING for d in decisions if isinstance(d, Start)}
    phases |= {d.role: STOPPING for d in decisions if isinstance(d, Stop)}
    refused = {d.role for d in decisions if isinstance(d, Refuse)}
    return dataclasses.replace(
        snapshot,
        roles=tuple(
            dataclasses.replace(s, phase=phases.get(s.role, s.phase)) for s in snapshot.roles
        ),
        demands=tuple(d for d in snapshot.demands if d.role not in refused),
    )


def actions(decisions: tuple[Decision, ...]) -> list[Decision]:
    return [d for d in decisions if isinstance(d, Start | Stop | Refuse)]


@pytest.mark.parametrize(("snapshot", "expected"), CASES.values(), ids=CASES.keys())
def test_carried_out_decisions_are_not_repeated(snapshot: Snapshot, expected: list[str]) -> None:
    again = decide(applied(snapshot, decide(snapshot)))
    assert actions(again) == []


def test_the_eviction_log_line_gives_the_numbers() -> None:
    snapshot = snap(
        role("chat", gb=2, measured_gb=2.1, last_used=58),
        role("coder", UNLOADED, 9.3),
        want=("coder",),
        budget_gb=10,
    )
    stop = decide(snapshot)[0]
    assert isinstance(stop, Stop)
    assert stop.message == (
        "evicted chat (idle 42 s, 2.1 GB measured) to make room for coder (est. 9.3 GB)"
    )


def test_a_model_that_can_never_fit_is_told_the_numbers() -> None:
    snapshot = snap(
        role("embed", gb=2, pinned=True),
        role("coder", UNLOADED, 9.3),
        want=("coder",),
        budget_gb=10,
    )
    [refuse] = decide(snapshot)
    assert isinstance(refuse, Refuse) and refuse.reason is RefuseReason.CANNOT_FIT
    assert refuse.message == (
        "coder needs est. 9.3 GB, more than the memory budget of 10.0 GB "
        "less 2.0 GB for pinned entries: it can never load"
    )


def test_a_failed_model_is_refused_with_the_time_until_its_next_try() -> None:
    [refuse] = decide(snap(role("coder", FAILED, retry_at=130), want=("coder",)))
    assert isinstance(refuse, Refuse)
    assert refuse.retry_after_s == 30
    assert refuse.message == "coder failed to start (exited with status 1); next try in 30 s"


def test_a_steady_stream_to_a_running_model_does_not_starve_a_waiting_one() -> None:
    """One request for chat arrives and one finishes every step, so chat is never idle by
    itself; coder, which needs chat's memory, must still get its turn within a few steps."""
    state = {
        "chat": role("chat", gb=6, in_flight=1, last_used=0),
        "coder": role("coder", UNLOADED, 6),
    }
    demands = [Demand("coder", 1)]
    for step in range(2, 12):
        demands.append(Demand("chat", step))
        snapshot = Snapshot(
            tuple(state.values()), tuple(demands), budget_bytes=10 * GB, now=float(step)
        )
        decisions = decide(snapshot)
        for decision in actions(decisions):  # the owner carries these out first
            phase = STARTING if isinstance(decision, Start) else STOPPING
            state[decision.role] = dataclasses.replace(state[decision.role], phase=phase)
        held_after = {d.role: d.after_seq for d in decisions if isinstance(d, Hold)}
        for demand in list(demands):
            current = state[demand.role]
            admitted = current.phase is READY and demand.seq <= held_after.get(demand.role, step)
            if admitted:
                state[demand.role] = dataclasses.replace(current, in_flight=current.in_flight + 1)
                demands.remove(demand)
        for name, current in state.items():  # the oldest request finishes; starts and stops end
            if current.phase is READY:
                current = dataclasses.replace(
                    current, in_flight=max(0, current.in_flight - 1), last_used=float(step)
                )
            phase = {STARTING: READY, STOPPING: UNLOADED}.get(current.phase, current.phase)
            state[name] = dataclasses.replace(current, phase=phase)
        if state["coder"].phase is READY:
            return
    raise AssertionError(f"coder never started: {state}")


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
    roles = []
    for name in names:
        phase = draw(st.sampled_from(list(Phase)))
        resident = phase in (READY, STARTING, STOPPING)
        roles.append(
            RoleState(
                role=name,
                phase=phase,
                estimate_bytes=draw(st.integers(1, 8)) * GB,
                measured_bytes=draw(st.none() | st.integers(1, 10).map(lambda n: n * GB))
                if resident
                else None,
                pinned=draw(st.booleans()),
                idle_ttl_s=draw(st.none() | st.sampled_from([10.0, 60.0])),
                in_flight=draw(st.integers(0, 2)) if phase is READY else 0,
                queued=draw(st.integers(0, 1)) if phase is READY else 0,
                last_used=draw(st.none() | st.floats(0, 100)) if resident else None,
                retry_at=draw(st.none() | st.floats(50, 150)) if phase is FAILED else None,
            )
        )
    want = draw(st.lists(st.sampled_from(names), max_size=8))
    return Snapshot(
        roles=tuple(roles),
        demands=tuple(Demand(name, seq) for seq, name in enumerate(want)),
        budget_bytes=draw(st.none() | st.integers(4, 30).map(lambda n: n * GB)),
        max_loaded_models=draw(st.none() | st.integers(1, 4)),
        now=100.0,
    )


@settings(derandomize=True, max_examples=150, deadline=None)
@given(snapshots())
def test_policy_invariants(snapshot: Snapshot) -> None:
    decisions = decide(snapshot)
    states = {s.role: s for s in snapshot.roles}
    stopped = [d.role for d in decisions if isinstance(d, Stop)]
    started = [d.role for d in decisions if isinstance(d, Start)]
    first_demand = {d.role: d.seq for d in sorted(snapshot.demands, key=lambda d: -d.seq)}
    for stop in (d for d in decisions if isinstance(d, Stop)):
        victim = states[stop.role]
        assert victim.phase is READY and not victim.busy and not victim.pinned, victim
        if stop.for_role is None:  # idle TTL: never while a request for it waits
            assert stop.role not in first_demand
        else:  # making room: never for a demand that came after one for the victim
            assert first_demand.get(stop.role, 10**9) > first_demand[stop.for_role]
    assert len(set(stopped)) == len(stopped) and len(set(started)) == len(started)
    assert set(started) <= {d.role for d in snapshot.demands}

    # a start never takes memory or a place that is not free, stopping backends included
    resident = [s for s in snapshot.roles if s.resident]
    after = resident + [states[name] for name in started]
    if started and snapshot.budget_bytes is not None:
        assert sum(s.need_bytes for s in after) <= snapshot.budget_bytes
    if started and snapshot.max_loaded_models is not None:
        assert len(after) <= snapshot.max_loaded_models

    # deterministic, whatever order the owner listed things in
    reordered = dataclasses.replace(
        snapshot, roles=snapshot.roles[::-1], demands=snapshot.demands[::-1]
    )
    assert decide(reordered) == decisions == decide(snapshot)
    assert actions(decide(applied(snapshot, decisions))) == []


def test_an_eviction_line_gives_the_measurement_below_the_estimate_too() -> None:
    decisions = decide(
        snap(
            role("chat", gb=2, measured_gb=0.4, last_used=58),
            role("coder", UNLOADED, gb=3),
            want=("coder",),
            budget_gb=4,
        )
    )
    stop = next(d for d in decisions if isinstance(d, Stop))
    assert stop.message == (
        "evicted chat (idle 42 s, est. 2.0 GB, 0.4 GB measured) to make room for coder "
        "(est. 3.0 GB)"
    )


def test_a_stopped_model_plans_with_what_it_took_when_it_last_ran() -> None:
    # Estimated at 1 GB, measured at 3 GB in its last run: chat must go to make room.
    decisions = decide(
        snap(
            role("chat", gb=1, last_used=50),
            role("coder", UNLOADED, gb=1, measured_gb=3),
            want=("coder",),
            budget_gb=3.5,
        )
    )
    assert [brief(d) for d in decisions] == ["stop chat for coder", "wait coder on chat"]
