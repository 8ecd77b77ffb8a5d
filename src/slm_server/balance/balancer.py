"""One entry's balancer: picks an upstream per attempt and learns from the outcomes.

It owns the entry's balancing state (the round-robin cursor, the session table, the
failure accounting) and nothing else: in-flight counts and health come in with each
call, as the router sees them, and time is passed in.

Contract with the caller: every `Pick` it acts on is followed by its outcome:
`succeeded` when a good answer head arrived, `failed` when the attempt failed (before
the head, or later when the stream broke: a pick may report `succeeded` and then
`failed`), or `abandoned` when the client left before either. A probe left without an
outcome would keep its upstream out until the next reload.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

from slm_server.balance.affinity import Sessions
from slm_server.balance.choice import Upstream, choose, choose_untried
from slm_server.balance.cooldown import Cooldowns, Standing
from slm_server.balance.settings import BalanceSettings

SESSIONS_KEPT = 4096  # keys remembered per entry for affinity: a few hundred KB at most


class Why(Enum):
    ALL_DOWN = "all_down"  # none of the untried upstreams is up
    ALL_COOLING = "all_cooling"  # those that are up are out after failures (or being probed)
    ALL_TRIED = "all_tried"  # this request has been to every upstream already


@dataclass(frozen=True, slots=True)
class Pick:
    """Send the attempt to `upstream`. `probe`: it is the one request that decides whether
    a cooled-down upstream comes back."""

    upstream: str
    probe: bool = False
    # Which server the name stood for when picked: `forget` moves a name to another, and
    # the outcome of a pick made before that says nothing of the new one.
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No upstream can take the attempt. `retry_after_s`: when one may again (cooling only)."""

    why: Why
    message: str
    retry_after_s: float | None = None


class Balancer:
    def __init__(
        self, role: str, settings: BalanceSettings, *, sessions_kept: int = SESSIONS_KEPT
    ) -> None:
        self.role = role
        self.settings = settings
        self.cooldowns = Cooldowns(settings.cooldown_after, settings.cooldown_s)
        self.sessions = Sessions(sessions_kept)
        self._cursor = 0
        self._generations: dict[str, int] = {}  # per upstream forgotten; absent: 0
        # The pick of each upstream that is no probe, made once: a pick is made per request.
        self._picks: dict[str, Pick] = {}

    def pick(
        self,
        upstreams: Sequence[Upstream],
        now: float,
        *,
        key: str | None = None,
        tried: Collection[str] = (),
    ) -> Pick | Unavailable:
        """Where the next attempt of a request goes.

        Among the upstreams this request has not `tried` that are up: the one its
        affinity `key` is bound to, while that one is in rotation; else a cooled-down
        one whose probe is due (the probe goes out at once, so that a recovered upstream
        comes back without waiting for the strategy to reach it); else the strategy's
        choice among those in rotation. The key is then bound to the chosen upstream,
        so a session moves only when its upstream is out.
        """
        settings = self.settings
        if settings.affinity is None:
            key = None
        if key is None and self.cooldowns.none_out():
            # Nothing to probe and no session to keep: the strategy alone decides.
            index = choose_untried(upstreams, tried, settings.strategy, self._cursor)
            if index is not None:
                self._cursor = index + 1
                upstream = upstreams[index].id
                return self._picks.get(upstream) or self._pick(upstream)
        untried = [i for i, upstream in enumerate(upstreams) if upstream.id not in tried]
        up = [i for i in untried if upstreams[i].healthy]
        standing = {i: self.cooldowns.standing(upstreams[i].id, now) for i in up}
        in_rotation = [i for i in up if standing[i] is Standing.IN_ROTATION]
        if key is not None:
            bound = self.sessions.get(key)
            if bound is not None and any(upstreams[i].id == bound for i in in_rotation):
                return self._pick(bound)
        due = [i for i in up if standing[i] is Standing.PROBE_DUE]
        if due:
            chosen = self._pick(upstreams[due[0]].id, probe=True)
            self.cooldowns.probe_started(chosen.upstream, now)
        elif in_rotation:
            index = choose(upstreams, in_rotation, self.settings.strategy, self._cursor)
            self._cursor = index + 1
            chosen = self._pick(upstreams[index].id)
        else:
            return self._unavailable(upstreams, untried, up, now)
        if key is not None:
            self.sessions.bind(key, chosen.upstream)
        return chosen

    def succeeded(self, pick: Pick) -> None:
        # Told after every answer: nothing more is done while the upstream has no failure
        # on record, as it has none while all is well.
        if self.cooldowns.recorded(pick.upstream) and self._current(pick):
            self.cooldowns.succeeded(pick.upstream, probe=pick.probe)

    def failed(self, pick: Pick, now: float) -> None:
        if self._current(pick):
            self.cooldowns.failed(pick.upstream, now, probe=pick.probe)

    def abandoned(self, pick: Pick) -> None:
        if self._current(pick):
            self.cooldowns.abandoned(pick.upstream, probe=pick.probe)

    def bind(self, key: str, upstream: str) -> None:
        """Send later requests with `key` to `upstream` (e.g. `response_key` of an answer's
        id, so the next turn of that conversation goes where it was made)."""
        if self.settings.affinity is not None:
            self.sessions.bind(key, upstream)

    def forget(self, upstream: str) -> None:
        """Drop all that was learnt of `upstream` (failures, cooldown, probe, the sessions
        bound to it): its name now stands for another server, as after a reload that moved
        the replicas after a removed one up by one."""
        self.cooldowns.forget(upstream)
        self.sessions.unbind(upstream)
        self._generations[upstream] = self._generations.get(upstream, 0) + 1
        self._picks.pop(upstream, None)

    def _pick(self, upstream: str, *, probe: bool = False) -> Pick:
        if not probe:
            pick = self._picks.get(upstream)
            if pick is None:
                pick = self._picks[upstream] = Pick(upstream, False, self._generation(upstream))
            return pick
        return Pick(upstream, True, self._generation(upstream))

    def _generation(self, upstream: str) -> int:
        generations = self._generations
        return generations.get(upstream, 0) if generations else 0

    def _current(self, pick: Pick) -> bool:
        """Whether `pick`'s upstream is still the server it was picked as."""
        return pick.generation == self._generations.get(pick.upstream, 0)

    def standing(self, upstream: str, now: float) -> Standing:
        return self.cooldowns.standing(upstream, now)

    def _unavailable(
        self, upstreams: Sequence[Upstream], untried: list[int], up: list[int], now: float
    ) -> Unavailable:
        count = len(upstreams)
        if upstreams and not untried:
            message = f"this request has been tried on all {count} upstreams of {self.role}"
            return Unavailable(Why.ALL_TRIED, message)
        if not up:
            return Unavailable(Why.ALL_DOWN, f"no upstream of {self.role} is up")
        until = [self.cooldowns.cooling_until(upstreams[i].id) for i in up]
        wait = max(min(t for t in until if t is not None) - now, 0.0)  # 0: a probe is out
        message = f"every upstream of {self.role} that is up is cooling down after failures"
        message += f"; the next try is in {wait:.0f} s" if wait > 0 else "; one is being tried"
        return Unavailable(Why.ALL_COOLING, message, retry_after_s=wait)
