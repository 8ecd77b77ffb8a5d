"""One entry's balancer over simulated upstreams: affinity, probes, failover, and why not."""

from __future__ import annotations

import pytest

from slm_server.balance import (
    Affinity,
    Attempts,
    Balancer,
    BalanceSettings,
    Failure,
    Pick,
    Standing,
    Unavailable,
    Upstream,
    Why,
    response_key,
)

IDS = ("r0", "r1", "r2", "r3")
SESSION = BalanceSettings(affinity=Affinity.SESSION)


def up(*down: str, busy: dict[str, int] | None = None) -> list[Upstream]:
    busy = busy or {}
    return [Upstream(i, busy.get(i, 0), healthy=i not in down) for i in IDS]


def picked(result: Pick | Unavailable) -> Pick:
    assert isinstance(result, Pick), result
    return result


def cool(balancer: Balancer, upstream: str, now: float) -> None:
    for _ in range(balancer.settings.cooldown_after):
        balancer.failed(Pick(upstream), now)
    assert balancer.standing(upstream, now) is Standing.COOLING


# affinity


def test_a_session_stays_on_its_upstream_even_when_others_are_idler() -> None:
    balancer = Balancer("m", SESSION)
    first = picked(balancer.pick(up(), 0.0, key="user:a")).upstream
    busy = {first: 10}
    for _ in range(5):
        assert picked(balancer.pick(up(busy=busy), 0.0, key="user:a")).upstream == first
    assert picked(balancer.pick(up(busy=busy), 0.0, key="user:b")).upstream != first


def test_without_affinity_the_key_is_ignored() -> None:
    balancer = Balancer("m", BalanceSettings())
    first = picked(balancer.pick(up(), 0.0, key="user:a")).upstream
    again = picked(balancer.pick(up(busy={first: 1}), 0.0, key="user:a")).upstream
    assert again != first
    balancer.bind(response_key("resp_1"), "r3")  # nothing to bind to
    assert len(balancer.sessions) == 0


def test_a_session_moves_when_its_upstream_goes_down_and_stays_moved() -> None:
    balancer = Balancer("m", SESSION)
    first = picked(balancer.pick(up(), 0.0, key="s")).upstream
    moved = picked(balancer.pick(up(first), 0.0, key="s")).upstream
    assert moved != first
    assert picked(balancer.pick(up(), 0.0, key="s")).upstream == moved  # its cache is there now


def test_a_session_moves_when_its_upstream_cools_down() -> None:
    balancer = Balancer("m", SESSION)
    first = picked(balancer.pick(up(), 0.0, key="s")).upstream
    cool(balancer, first, 1.0)
    moved = picked(balancer.pick(up(), 1.0, key="s")).upstream
    assert moved != first


def test_a_retry_leaves_the_session_upstream_it_just_failed_on() -> None:
    balancer = Balancer("m", SESSION)
    first = picked(balancer.pick(up(), 0.0, key="s")).upstream
    retry = picked(balancer.pick(up(), 0.0, key="s", tried={first})).upstream
    assert retry != first


def test_only_the_most_recent_sessions_are_remembered() -> None:
    balancer = Balancer("m", SESSION, sessions_kept=2)
    homes = {key: picked(balancer.pick(up(), 0.0, key=key)).upstream for key in "abc"}
    assert len(balancer.sessions) == 2
    assert homes == {"a": "r0", "b": "r1", "c": "r2"}
    # a was forgotten: it goes where the strategy says (r3 in turn), b and c stay home
    assert picked(balancer.pick(up(), 0.0, key="a")).upstream == "r3"
    assert picked(balancer.pick(up(), 0.0, key="c")).upstream == "r2"


def test_the_next_turn_of_a_conversation_goes_where_its_answer_was_made() -> None:
    balancer = Balancer("m", SESSION)
    balancer.bind(response_key("resp_1"), "r2")
    for _ in range(3):
        result = balancer.pick(up(busy={"r2": 5}), 0.0, key=response_key("resp_1"))
        assert picked(result).upstream == "r2"


def test_a_session_is_not_sent_off_its_upstream_to_probe_another() -> None:
    balancer = Balancer("m", SESSION)
    home = picked(balancer.pick(up(), 0.0, key="s")).upstream
    other = next(i for i in IDS if i != home)
    cool(balancer, other, 0.0)
    assert balancer.standing(other, 30.0) is Standing.PROBE_DUE
    assert picked(balancer.pick(up(), 30.0, key="s")) == Pick(home)
    assert picked(balancer.pick(up(), 30.0)) == Pick(other, probe=True)


# cooldown and probes through pick


def test_a_cooling_upstream_gets_no_requests_until_its_one_probe() -> None:
    balancer = Balancer("m", BalanceSettings())
    cool(balancer, "r1", 0.0)
    before = [picked(balancer.pick(up(), t)).upstream for t in (1.0, 2.0, 29.9)]
    assert "r1" not in before
    probe = picked(balancer.pick(up(), 30.0))
    assert probe == Pick("r1", probe=True)  # the first request once the cooldown ran out
    during = [picked(balancer.pick(up(), 31.0)).upstream for _ in range(8)]
    assert "r1" not in during  # exactly one probe, however many requests arrive meanwhile
    balancer.succeeded(probe)
    assert balancer.standing("r1", 31.0) is Standing.IN_ROTATION
    after = {picked(balancer.pick(up(), 31.0)).upstream for _ in range(4)}
    assert after == set(IDS)


def test_a_failed_probe_keeps_the_upstream_out_for_another_cooldown() -> None:
    balancer = Balancer("m", BalanceSettings(cooldown_s=10.0))
    cool(balancer, "r1", 0.0)
    probe = picked(balancer.pick(up(), 10.0))
    assert probe.probe
    balancer.failed(probe, 12.0)
    assert "r1" not in {picked(balancer.pick(up(), 21.9)).upstream for _ in range(8)}
    assert picked(balancer.pick(up(), 22.0)) == Pick("r1", probe=True)


def test_an_abandoned_probe_goes_to_the_next_request() -> None:
    balancer = Balancer("m", BalanceSettings())
    cool(balancer, "r1", 0.0)
    probe = picked(balancer.pick(up(), 30.0))
    balancer.abandoned(probe)
    assert picked(balancer.pick(up(), 30.5)) == Pick("r1", probe=True)


def test_a_probe_is_not_sent_to_a_down_upstream_or_one_this_request_tried() -> None:
    balancer = Balancer("m", BalanceSettings())
    cool(balancer, "r1", 0.0)
    assert not picked(balancer.pick(up("r1"), 30.0)).probe
    assert not picked(balancer.pick(up(), 30.0, tried={"r1"})).probe
    assert balancer.standing("r1", 30.0) is Standing.PROBE_DUE  # still due for the next one


def test_a_success_between_failures_keeps_an_upstream_in_rotation() -> None:
    balancer = Balancer("m", BalanceSettings(cooldown_after=2))
    balancer.failed(Pick("r0"), 0.0)
    balancer.succeeded(Pick("r0"))
    balancer.failed(Pick("r0"), 0.0)
    assert balancer.standing("r0", 0.0) is Standing.IN_ROTATION
    balancer.failed(Pick("r0"), 0.0)
    assert balancer.standing("r0", 0.0) is Standing.COOLING


# why no upstream can take a request


def test_all_down() -> None:
    result = Balancer("qwen", BalanceSettings()).pick(up(*IDS), 0.0)
    assert result == Unavailable(Why.ALL_DOWN, "no upstream of qwen is up")
    assert Balancer("qwen", BalanceSettings()).pick([], 0.0) == result


def test_all_cooling_says_when_the_next_try_is() -> None:
    balancer = Balancer("qwen", BalanceSettings())
    cool(balancer, "r0", 0.0)
    cool(balancer, "r1", 5.0)
    result = balancer.pick(up("r2", "r3"), 10.0)
    assert isinstance(result, Unavailable) and result.why is Why.ALL_COOLING
    assert result.retry_after_s == 20.0
    assert result.message == (
        "every upstream of qwen that is up is cooling down after failures; the next try is in 20 s"
    )


def test_all_cooling_while_the_probe_is_out() -> None:
    balancer = Balancer("qwen", BalanceSettings())
    cool(balancer, "r0", 0.0)
    assert picked(balancer.pick(up("r1", "r2", "r3"), 30.0)).probe
    result = balancer.pick(up("r1", "r2", "r3"), 31.0)
    assert isinstance(result, Unavailable) and result.why is Why.ALL_COOLING
    assert result.retry_after_s == 0.0 and result.message.endswith("one is being tried")


def test_all_tried() -> None:
    result = Balancer("qwen", BalanceSettings()).pick(up(), 0.0, tried=set(IDS))
    assert result == Unavailable(
        Why.ALL_TRIED, "this request has been tried on all 4 upstreams of qwen"
    )


def test_the_untried_ones_decide_why() -> None:
    balancer = Balancer("qwen", BalanceSettings())
    result = balancer.pick(up("r2", "r3"), 0.0, tried={"r0", "r1"})
    assert isinstance(result, Unavailable) and result.why is Why.ALL_DOWN


# settings


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("retries", -1, "retries must be 0 or more"),
        ("cooldown_after", 0, "cooldown_after must be 1 or more"),
        ("cooldown_s", -0.5, "cooldown_s must be 0 or more"),
        ("cooldown_s", float("nan"), "cooldown_s must be 0 or more"),
    ],
)
def test_settings_refuse_values_that_make_no_sense(field: str, value: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        BalanceSettings(**{field: value})  # type: ignore[arg-type]


def test_the_defaults_are_the_documented_ones() -> None:
    defaults = BalanceSettings()
    assert defaults.strategy.value == "least_busy" and defaults.affinity is None
    assert (defaults.retries, defaults.cooldown_after, defaults.cooldown_s) == (1, 3, 30.0)
    assert defaults.fallbacks == ()


# a replica killed under load, as a simulation


def test_a_replica_killed_under_load_costs_no_request_and_comes_back_after_its_probe() -> None:
    """Requests arrive every 0.1 s and each takes 1 s. r1 dies at t=2 and is back (its
    process restarted) at t=10. Every request whose answer had not started is retried
    elsewhere and answered; r1 is cooled down after 3 failures, gets one probe after 30 s,
    and then its share again."""
    balancer = Balancer("m", BalanceSettings())
    open_until: dict[str, list[float]] = {i: [] for i in IDS}
    served: dict[str, int] = dict.fromkeys(IDS, 0)
    failed_requests = 0
    probes: list[float] = []
    refused: list[float] = []  # when r1 refused a request
    for step in range(600):
        now = step / 10
        r1_alive = not 2.0 <= now < 10.0
        for upstream in IDS:
            open_until[upstream] = [t for t in open_until[upstream] if t > now]
        fleet = [Upstream(i, len(open_until[i]), healthy=True) for i in IDS]
        attempts = Attempts("m", retries=1, deadline=now + 30, fallbacks_of={"m": ()})
        while True:
            pick = balancer.pick(fleet, now, tried=attempts.tried())
            assert isinstance(pick, Pick)
            attempts.sent(pick.upstream)
            if pick.probe:
                probes.append(now)
            if pick.upstream == "r1" and not r1_alive:
                balancer.failed(pick, now)
                refused.append(now)
                if attempts.retry(Failure.REFUSED, answer_started=False, now=now):
                    continue
                failed_requests += 1
                break
            balancer.succeeded(pick)
            open_until[pick.upstream].append(now + 1.0)
            served[pick.upstream] += 1
            break
        if 10.0 <= now < 32.0:  # back up, but still out until its probe
            assert balancer.standing("r1", now) is not Standing.IN_ROTATION
    assert failed_requests == 0
    # three refusals soon after it died, then no request until one probe 30 s later
    assert len(refused) == 3 and 2.0 <= refused[0] <= refused[2] < 3.0
    assert len(probes) == 1 and probes[0] == pytest.approx(refused[2] + 30.0, abs=0.1)
    assert balancer.standing("r1", 60.0) is Standing.IN_ROTATION
    assert all(served[i] > 0 for i in IDS)
    # once back, r1 takes its turn as before: in the last 10 s each served a quarter
    assert min(len(open_until[i]) for i in IDS) >= 2


def test_a_forgotten_upstream_starts_afresh_and_loses_its_sessions() -> None:
    balancer = Balancer("gemma", SESSION)
    assert picked(balancer.pick(up(), 0.0, key="session:a")).upstream == "r0"
    assert picked(balancer.pick(up(), 0.0, key="session:b")).upstream == "r1"
    cool(balancer, "r0", 0.0)
    balancer.forget("r0")  # the name now stands for another server
    assert balancer.standing("r0", 0.0) is Standing.IN_ROTATION
    assert balancer.sessions.get("session:a") is None
    assert balancer.sessions.get("session:b") == "r1"  # the others keep theirs
    balancer.forget("r3")  # nothing known of it: nothing to do
    assert len(balancer.sessions) == 1


def test_an_outcome_of_a_pick_made_before_its_name_was_forgotten_is_ignored() -> None:
    balancer = Balancer("m", BalanceSettings(cooldown_after=1))
    before = picked(balancer.pick(up(), 0.0, tried=("r1", "r2", "r3")))
    assert before.upstream == "r0"
    balancer.forget("r0")  # a reload gave the name to another server meanwhile
    balancer.failed(before, 1.0)
    assert balancer.standing("r0", 1.0) is Standing.IN_ROTATION
    # A pick made since is of the server that has the name now: its outcome counts.
    after = picked(balancer.pick(up(), 2.0, tried=("r1", "r2", "r3")))
    balancer.failed(after, 2.0)
    assert balancer.standing("r0", 2.0) is Standing.COOLING
