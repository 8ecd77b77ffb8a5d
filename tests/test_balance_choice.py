"""The strategies as plain calls: who gets the next request, with in-flight counts given."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_server.balance import (
    Affinity,
    Balancer,
    BalanceSettings,
    Pick,
    Strategy,
    Unavailable,
    Upstream,
    choose,
)
from slm_server.balance.choice import choose_untried

IDS = ("r0", "r1", "r2", "r3")


def fleet(*in_flight: int) -> list[Upstream]:
    return [Upstream(f"r{i}", n) for i, n in enumerate(in_flight)]


def test_round_robin_takes_the_first_eligible_at_or_after_the_cursor() -> None:
    upstreams = fleet(0, 0, 0, 0)
    assert choose(upstreams, [0, 1, 2, 3], Strategy.ROUND_ROBIN, 2) == 2
    assert choose(upstreams, [0, 1, 3], Strategy.ROUND_ROBIN, 2) == 3
    assert choose(upstreams, [0, 1], Strategy.ROUND_ROBIN, 2) == 0  # wraps around
    assert choose(upstreams, [0, 1], Strategy.ROUND_ROBIN, 6) == 0  # cursor past the end


def test_round_robin_ignores_load() -> None:
    assert choose(fleet(9, 0, 0, 0), [0, 1, 2, 3], Strategy.ROUND_ROBIN, 0) == 0


def test_least_busy_takes_the_fewest_in_flight() -> None:
    assert choose(fleet(3, 1, 2, 5), [0, 1, 2, 3], Strategy.LEAST_BUSY, 0) == 1
    assert choose(fleet(3, 1, 2, 5), [0, 2, 3], Strategy.LEAST_BUSY, 0) == 2  # 1 not eligible


def test_least_busy_ties_take_turns_from_the_cursor() -> None:
    upstreams = fleet(1, 0, 4, 0)
    assert choose(upstreams, [0, 1, 2, 3], Strategy.LEAST_BUSY, 0) == 1
    assert choose(upstreams, [0, 1, 2, 3], Strategy.LEAST_BUSY, 2) == 3
    assert choose(upstreams, [0, 1, 2, 3], Strategy.LEAST_BUSY, 4) == 1


def test_choosing_from_nothing_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="no eligible upstream"):
        choose(fleet(0), [], Strategy.LEAST_BUSY, 0)


def hold_open(balancer: Balancer, requests: int, count: int = 4) -> list[int]:
    """Send `requests` that all stay open (nothing finishes); the in-flight count per upstream."""
    in_flight = [0] * count
    for _ in range(requests):
        pick = balancer.pick([Upstream(f"r{i}", n) for i, n in enumerate(in_flight)], 0.0)
        assert isinstance(pick, Pick) and not pick.probe
        in_flight[int(pick.upstream[1:])] += 1
    return in_flight


def test_least_busy_spreads_64_open_requests_evenly_over_4_upstreams() -> None:
    spread = hold_open(Balancer("m", BalanceSettings()), 64)
    # the target is within 2 of even; least busy with ties taken in turn is exact
    assert spread == [16, 16, 16, 16]


def test_least_busy_evens_out_a_fleet_that_starts_uneven() -> None:
    balancer = Balancer("m", BalanceSettings())
    in_flight = [10, 0, 3, 0]  # e.g. r0 took a burst while the others were restarting
    for _ in range(19):
        pick = balancer.pick([Upstream(f"r{i}", n) for i, n in enumerate(in_flight)], 0.0)
        assert isinstance(pick, Pick)
        in_flight[int(pick.upstream[1:])] += 1
    # the 19 new ones all go to the other three, which end within one of each other
    assert in_flight[0] == 10 and sum(in_flight[1:]) == 22
    assert max(in_flight[1:]) - min(in_flight[1:]) <= 1


def test_round_robin_goes_around_in_order() -> None:
    balancer = Balancer("m", BalanceSettings(strategy=Strategy.ROUND_ROBIN))
    upstreams = [Upstream(i, in_flight=7 if i == "r1" else 0) for i in IDS]
    order = []
    for _ in range(9):
        pick = balancer.pick(upstreams, 0.0)
        assert isinstance(pick, Pick)
        order.append(pick.upstream)
    assert order == ["r0", "r1", "r2", "r3", "r0", "r1", "r2", "r3", "r0"]


def test_round_robin_skips_a_down_upstream_and_keeps_its_turns() -> None:
    balancer = Balancer("m", BalanceSettings(strategy=Strategy.ROUND_ROBIN))
    upstreams = [Upstream(i, healthy=i != "r1") for i in IDS]
    order = [getattr(balancer.pick(upstreams, 0.0), "upstream", None) for _ in range(6)]
    assert order == ["r0", "r2", "r3", "r0", "r2", "r3"]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    start=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    events=st.lists(st.one_of(st.none(), st.integers(0, 5)), max_size=60),
)
def test_least_busy_never_widens_the_spread(start: list[int], events: list[int | None]) -> None:
    """Whatever finishes when (an int: a request on that upstream ends; None: one arrives),
    a new request never makes the busiest and the idlest further apart than they were,
    or than 1."""
    balancer = Balancer("m", BalanceSettings())
    in_flight = list(start)
    for event in events:
        if event is not None:
            index = event % len(in_flight)
            in_flight[index] = max(in_flight[index] - 1, 0)
            continue
        before = max(in_flight) - min(in_flight)
        pick = balancer.pick([Upstream(f"r{i}", n) for i, n in enumerate(in_flight)], 0.0)
        assert isinstance(pick, Pick)
        in_flight[int(pick.upstream[1:])] += 1
        assert max(in_flight) - min(in_flight) <= max(before, 1)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(count=st.integers(1, 8), rounds=st.integers(1, 6))
def test_round_robin_gives_each_upstream_the_same_share(count: int, rounds: int) -> None:
    balancer = Balancer("m", BalanceSettings(strategy=Strategy.ROUND_ROBIN))
    upstreams = [Upstream(f"r{i}") for i in range(count)]
    picks = [balancer.pick(upstreams, 0.0) for _ in range(count * rounds)]
    ids = [pick.upstream for pick in picks if isinstance(pick, Pick)]
    assert all(ids.count(u.id) == rounds for u in upstreams)


def test_least_busy_shares_short_requests_in_turn() -> None:
    """Requests that end before the next arrives see every upstream idle: taking turns on
    the tie keeps the first upstream from getting them all (and its prompt cache cold)."""
    balancer = Balancer("m", BalanceSettings())
    idle = [Upstream(i) for i in IDS]
    order = [getattr(balancer.pick(idle, 0.0), "upstream", None) for _ in range(8)]
    assert order == [*IDS, *IDS]


# The one-pass choice made while no upstream is out must be the general one's.

upstream_states = st.lists(
    st.tuples(st.integers(0, 4), st.booleans(), st.booleans()),  # in flight, healthy, tried
    max_size=6,
)


@settings(derandomize=True, max_examples=500, deadline=None)
@given(states=upstream_states, cursor=st.integers(0, 12), strategy=st.sampled_from(Strategy))
def test_the_one_pass_choice_is_the_general_one(
    states: list[tuple[int, bool, bool]], cursor: int, strategy: Strategy
) -> None:
    upstreams = [Upstream(f"r{i}", n, healthy) for i, (n, healthy, _) in enumerate(states)]
    tried = {f"r{i}" for i, (_, _, was_tried) in enumerate(states) if was_tried}
    eligible = [i for i, u in enumerate(upstreams) if u.healthy and u.id not in tried]
    expected = choose(upstreams, eligible, strategy, cursor) if eligible else None
    assert choose_untried(upstreams, tried, strategy, cursor) == expected


Step = tuple[list[tuple[int, bool]], int, str | None, str]  # state, tried, key, outcome


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    count=st.integers(1, 5),
    strategy=st.sampled_from(Strategy),
    affinity=st.sampled_from([None, Affinity.SESSION]),
    steps=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=5, max_size=5),
            st.integers(0, 31),  # which upstreams the request has tried, as bits
            st.sampled_from([None, "session:a", "session:b"]),
            st.sampled_from(["succeeded", "failed", "abandoned"]),
        ),
        max_size=40,
    ),
)
def test_a_balancer_picks_as_it_would_without_its_shortcut(
    count: int, strategy: Strategy, affinity: Affinity | None, steps: list[Step]
) -> None:
    """Two balancers see the same requests and outcomes over time, failures and cooldowns
    included; one never takes the path for a fleet with no upstream out. Every pick and
    every refusal must be the same."""
    settings_ = BalanceSettings(
        strategy=strategy, affinity=affinity, cooldown_after=2, cooldown_s=3
    )
    fast, general = Balancer("m", settings_), Balancer("m", settings_)
    general.cooldowns.none_out = lambda: False  # type: ignore[method-assign]
    for step, (states, tried_bits, key, outcome) in enumerate(steps):
        now = float(step)
        upstreams = [Upstream(f"r{i}", n, healthy) for i, (n, healthy) in enumerate(states)]
        upstreams = upstreams[:count]
        tried = {u.id for i, u in enumerate(upstreams) if tried_bits >> i & 1}
        picks = [b.pick(upstreams, now, key=key, tried=tried) for b in (fast, general)]
        assert picks[0] == picks[1]
        if isinstance(picks[0], Unavailable):
            continue
        for balancer, pick in zip((fast, general), picks, strict=True):
            assert isinstance(pick, Pick)
            if outcome == "succeeded":
                balancer.succeeded(pick)
            elif outcome == "failed":
                balancer.failed(pick, now)
            else:
                balancer.abandoned(pick)
