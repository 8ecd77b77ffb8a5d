"""Failure accounting with an injected clock: cooldown after N failures, one probe decides."""

from __future__ import annotations

import pytest

from slm_server.balance import Cooldowns, Standing

IN, COOLING, DUE, PROBING = (
    Standing.IN_ROTATION,
    Standing.COOLING,
    Standing.PROBE_DUE,
    Standing.PROBING,
)


def cooled(now: float = 100.0) -> Cooldowns:
    """r0 taken out at `now` by its third failure (cooldown_after 3, cooldown_s 30)."""
    cooldowns = Cooldowns(cooldown_after=3, cooldown_s=30.0)
    for _ in range(3):
        cooldowns.failed("r0", now, probe=False)
    return cooldowns


def test_an_upstream_cools_down_after_cooldown_after_consecutive_failures() -> None:
    cooldowns = Cooldowns(cooldown_after=3, cooldown_s=30.0)
    cooldowns.failed("r0", 10.0, probe=False)
    cooldowns.failed("r0", 11.0, probe=False)
    assert cooldowns.standing("r0", 11.0) is IN
    cooldowns.failed("r0", 12.0, probe=False)
    assert cooldowns.standing("r0", 12.0) is COOLING
    assert cooldowns.cooling_until("r0") == 42.0
    assert cooldowns.standing("r0", 41.9) is COOLING
    assert cooldowns.standing("r0", 42.0) is DUE
    assert cooldowns.standing("r1", 12.0) is IN  # the others are untouched


def test_a_success_starts_the_count_again() -> None:
    cooldowns = Cooldowns(cooldown_after=3, cooldown_s=30.0)
    for _ in range(2):
        cooldowns.failed("r0", 0.0, probe=False)
    cooldowns.succeeded("r0", probe=False)
    for _ in range(2):
        cooldowns.failed("r0", 0.0, probe=False)
    assert cooldowns.standing("r0", 0.0) is IN
    cooldowns.failed("r0", 0.0, probe=False)
    assert cooldowns.standing("r0", 0.0) is COOLING


def test_cooldown_after_one_takes_an_upstream_out_at_its_first_failure() -> None:
    cooldowns = Cooldowns(cooldown_after=1, cooldown_s=5.0)
    cooldowns.failed("r0", 0.0, probe=False)
    assert cooldowns.standing("r0", 0.0) is COOLING


def test_a_due_probe_is_taken_once_and_the_upstream_stays_out_until_it_reports() -> None:
    cooldowns = cooled()
    cooldowns.probe_started("r0", 130.0)
    assert cooldowns.standing("r0", 130.0) is PROBING
    assert cooldowns.standing("r0", 500.0) is PROBING  # however long the probe takes
    with pytest.raises(ValueError, match="no probe due"):
        cooldowns.probe_started("r0", 130.0)


def test_a_probe_cannot_start_before_the_cooldown_has_run_out() -> None:
    with pytest.raises(ValueError, match="no probe due"):
        cooled().probe_started("r0", 129.0)
    with pytest.raises(ValueError, match="no probe due"):
        Cooldowns(3, 30.0).probe_started("r9", 0.0)  # in rotation: nothing to probe


def test_the_probe_answering_brings_the_upstream_back_with_a_clean_count() -> None:
    cooldowns = cooled()
    cooldowns.probe_started("r0", 130.0)
    cooldowns.succeeded("r0", probe=True)
    assert cooldowns.standing("r0", 130.0) is IN
    assert cooldowns.cooling_until("r0") is None
    cooldowns.failed("r0", 131.0, probe=False)
    cooldowns.failed("r0", 131.0, probe=False)
    assert cooldowns.standing("r0", 131.0) is IN  # two new failures are not three


def test_the_probe_failing_cools_the_upstream_again_from_then() -> None:
    cooldowns = cooled()
    cooldowns.probe_started("r0", 130.0)
    cooldowns.failed("r0", 135.0, probe=True)
    assert cooldowns.standing("r0", 135.0) is COOLING
    assert cooldowns.cooling_until("r0") == 165.0
    assert cooldowns.standing("r0", 165.0) is DUE  # and then one probe again


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    cooldowns = cooled()
    cooldowns.probe_started("r0", 130.0)
    cooldowns.abandoned("r0", probe=True)
    assert cooldowns.standing("r0", 131.0) is DUE
    cooldowns.abandoned("r1", probe=False)  # nothing on record: nothing changes
    assert cooldowns.standing("r1", 131.0) is IN


def test_while_out_only_the_probe_decides() -> None:
    """Requests sent before the upstream was taken out report late: a late success must
    not let it back in without its probe, and late failures do not lengthen its cooldown."""
    cooldowns = cooled()
    cooldowns.succeeded("r0", probe=False)
    cooldowns.failed("r0", 120.0, probe=False)
    assert cooldowns.standing("r0", 120.0) is COOLING
    assert cooldowns.cooling_until("r0") == 130.0
    cooldowns.probe_started("r0", 130.0)
    cooldowns.succeeded("r0", probe=False)
    cooldowns.abandoned("r0", probe=False)
    assert cooldowns.standing("r0", 131.0) is PROBING


def test_a_probe_whose_stream_breaks_after_its_answer_counts_as_a_plain_failure() -> None:
    cooldowns = cooled()
    cooldowns.probe_started("r0", 130.0)
    cooldowns.succeeded("r0", probe=True)  # its head came: back in rotation
    cooldowns.failed("r0", 140.0, probe=True)  # then the stream broke: one failure of three
    assert cooldowns.standing("r0", 140.0) is IN


def test_upstreams_no_longer_configured_are_forgotten() -> None:
    cooldowns = cooled()
    cooldowns.failed("r1", 100.0, probe=False)
    cooldowns.keep_only({"r1"})
    assert cooldowns.standing("r0", 100.0) is IN
    assert cooldowns.cooling_until("r0") is None
    cooldowns.failed("r1", 100.0, probe=False)
    cooldowns.failed("r1", 100.0, probe=False)
    assert cooldowns.standing("r1", 100.0) is COOLING  # r1's count was kept
