"""Which entries start at launch under a memory budget and a count cap."""

from __future__ import annotations

from slm_server.scheduler import Phase, RoleState
from slm_server.scheduler.launch import launch_plan

GB = 10**9


def role(name: str, gb: float, *, pinned: bool = False) -> RoleState:
    return RoleState(name, Phase.UNLOADED, int(gb * GB), pinned=pinned)


def test_without_limits_everything_starts_in_config_order() -> None:
    plan = launch_plan([role("a", 9), role("b", 9)], None, None)
    assert plan.start == ("a", "b")
    assert plan.deferred == ()


def test_what_does_not_fit_waits_for_its_first_request() -> None:
    plan = launch_plan([role("a", 5), role("b", 4), role("c", 2)], 8 * GB, None)
    assert plan.start == ("a", "c")  # c still fits after b did not
    [(deferred, why)] = plan.deferred
    assert deferred == "b"
    assert why == "est. 4.0 GB would exceed the memory budget of 8.0 GB (5.0 GB taken)"


def test_pinned_entries_take_their_place_first() -> None:
    plan = launch_plan([role("chat", 6), role("embed", 1, pinned=True)], 6 * GB, None)
    assert plan.start == ("embed",)
    assert plan.deferred[0][0] == "chat"


def test_the_count_cap_defers_the_rest() -> None:
    plan = launch_plan([role("a", 1), role("b", 1), role("c", 1)], None, 2)
    assert plan.start == ("a", "b")
    assert plan.deferred == (("c", "max_loaded_models is 2, all taken"),)


def test_backends_already_running_count_against_the_budget_and_the_cap() -> None:
    running = [RoleState("a", Phase.READY, 5 * GB)]
    plan = launch_plan([role("b", 4), role("c", 2)], 8 * GB, None, running)
    assert plan.start == ("c",)
    assert plan.deferred == (
        ("b", "est. 4.0 GB would exceed the memory budget of 8.0 GB (5.0 GB taken)"),
    )
    capped = launch_plan([role("b", 1)], None, 1, running)
    assert capped.deferred == (("b", "max_loaded_models is 1, all taken"),)
