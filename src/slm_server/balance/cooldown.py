"""Failure accounting for one entry's upstreams: who is in rotation, cooling, or probed.

- `cooldown_after` consecutive failures take an upstream out for `cooldown_s`; a
  success in between starts the count again.
- Once the cooldown has run out, exactly one request is sent to it as a probe; the
  others keep avoiding it until the probe's outcome is known. A probe that answers
  brings it back; one that fails cools it down again for another `cooldown_s`; one
  abandoned by its client (no outcome) lets the next request probe instead.
- While an upstream is out, outcomes of requests that are not its probe are ignored:
  they were sent before it was taken out and say little about it now, and a late
  success must not let a dead upstream back in without its probe.

Only upstreams with a failure on record are kept, so the table is never larger than
the entry's list of upstreams.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum


class Standing(Enum):
    IN_ROTATION = "in_rotation"
    COOLING = "cooling"
    PROBE_DUE = "probe_due"  # cooled long enough: the next request may probe it
    PROBING = "probing"  # its one probe is out: no other request until it reports


@dataclass(slots=True)
class _Record:
    failures: int = 0  # consecutive, while in rotation
    cooling_until: float | None = None  # set while out of rotation
    probing: bool = False


class Cooldowns:
    """The standing of each upstream of one entry. Time is passed in (seconds, monotonic)."""

    def __init__(self, cooldown_after: int, cooldown_s: float) -> None:
        self.cooldown_after = cooldown_after
        self.cooldown_s = cooldown_s
        self._records: dict[str, _Record] = {}

    def standing(self, upstream: str, now: float) -> Standing:
        record = self._records.get(upstream)
        if record is None or record.cooling_until is None:
            return Standing.IN_ROTATION
        if record.probing:
            return Standing.PROBING
        return Standing.PROBE_DUE if now >= record.cooling_until else Standing.COOLING

    def none_out(self) -> bool:
        """Whether every upstream is in rotation (none cooling, due a probe or probed)."""
        if not self._records:
            return True
        return all(record.cooling_until is None for record in self._records.values())

    def recorded(self, upstream: str) -> bool:
        """Whether `upstream` has a failure on record (else it is in rotation, count 0)."""
        return upstream in self._records

    def cooling_until(self, upstream: str) -> float | None:
        record = self._records.get(upstream)
        return None if record is None else record.cooling_until

    def probe_started(self, upstream: str, now: float) -> None:
        if self.standing(upstream, now) is not Standing.PROBE_DUE:
            raise ValueError(f"{upstream} has no probe due")
        self._records[upstream].probing = True

    def succeeded(self, upstream: str, *, probe: bool) -> None:
        record = self._records.get(upstream)
        if record is None:
            return
        if record.cooling_until is None or (probe and record.probing):
            del self._records[upstream]  # back in rotation, with a clean count

    def failed(self, upstream: str, now: float, *, probe: bool) -> None:
        record = self._records.setdefault(upstream, _Record())
        if probe and record.probing:
            record.probing = False
            record.cooling_until = now + self.cooldown_s
            return
        if record.cooling_until is not None:
            return
        record.failures += 1
        if record.failures >= self.cooldown_after:
            record.failures = 0
            record.cooling_until = now + self.cooldown_s

    def abandoned(self, upstream: str, *, probe: bool) -> None:
        """A request ended with no outcome (its client left before any answer)."""
        record = self._records.get(upstream)
        if probe and record is not None and record.probing:
            record.probing = False  # still due: the next request probes it

    def forget(self, upstream: str) -> None:
        self._records.pop(upstream, None)

    def keep_only(self, upstreams: Collection[str]) -> None:
        """Forget upstreams no longer configured (after a reload)."""
        for gone in self._records.keys() - set(upstreams):
            del self._records[gone]
