"""A model served through a balancer: several upstreams (replicas), or one with fallbacks.

The balancer (balance/) decides; this module tells it what the router sees of each
upstream when a request arrives: its requests in flight (running and queued) and whether
it may take one at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slm_server.balance import Affinity, Balancer, BalanceSettings, Standing, Strategy, Upstream
from slm_server.config import ModelEntry
from slm_server.router.backend import Backend
from slm_server.supervisor import BackendProcess

# A loaded process takes requests first; one being loaded next; a stopped one is started
# by a request for it (on demand).
_LOADED = "ready"
_STARTING = "starting"
_STOPPED = "stopped"


def settings_of(entry: ModelEntry) -> BalanceSettings:
    return BalanceSettings(
        strategy=Strategy(entry.balance),
        affinity=None if entry.affinity is None else Affinity(entry.affinity),
        retries=entry.retries,
        cooldown_after=entry.cooldown_after,
        cooldown_s=entry.cooldown_s,
        fallbacks=tuple(entry.fallbacks),
    )


@dataclass
class ReplicaGroup:
    """The upstreams of one model id, in their configured order, and their balancer.

    ``role``: the group's role as written (a replica's role is ``<role>@<index>``), or the
    one role of an entry with one upstream that has fallbacks.
    """

    role: str
    replicas: list[Backend]
    balancer: Balancer
    replicas_by_role: dict[str, Backend] = field(init=False, repr=False)
    # One view per replica, brought up to date for each pick (see ``upstreams``), and
    # each with its replica: paired once, not zipped per request.
    _views: list[Upstream] = field(init=False, repr=False)
    _viewed: list[tuple[Upstream, Backend]] = field(init=False, repr=False)
    # Whether any replica is started here: only then does one's state depend on the others'.
    _any_local: bool = field(init=False, repr=False)
    # Where each replica's server is, as the group was made: a reload compares them.
    places: dict[str, tuple[str | None, int | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.replicas_by_role = {backend.role: backend for backend in self.replicas}
        self._views = [Upstream(backend.role) for backend in self.replicas]
        self._viewed = list(zip(self._views, self.replicas, strict=True))
        self._any_local = any(backend.entry.started_here for backend in self.replicas)
        self.places = {
            backend.role: (backend.entry.base_url, backend.entry.port) for backend in self.replicas
        }
        for backend in self.replicas:
            backend.balancer = self.balancer

    @property
    def entry(self) -> ModelEntry:
        """What all its upstreams share: id, model type, default_timeout, balancing."""
        return self.replicas[0].entry

    @property
    def label(self) -> str:
        count = len(self.replicas)
        if count == 1:
            return self.replicas[0].label
        return f"'{self.role}' ({self.entry.id}, {count} upstreams)"

    @property
    def settings(self) -> BalanceSettings:
        return self.balancer.settings

    def replica(self, role: str) -> Backend:
        return self.replicas_by_role[role]

    def upstreams(self, processes: Mapping[str, BackendProcess], now: float) -> list[Upstream]:
        """Each upstream as the balancer sees it ``now`` (see ``up_replicas``).

        The same views each time, updated in place: valid until the next call, which is
        all a pick needs (it runs before the request next awaits anything)."""
        views = self._views
        if self._any_local:
            for view, backend, healthy in zip(
                views, self.replicas, up_replicas(self.replicas, processes, now), strict=True
            ):
                view.in_flight = backend.gate.in_flight + backend.awaiting_turn
                view.healthy = healthy
        else:  # servers elsewhere only: each is up or not by itself
            for view, backend in self._viewed:
                view.in_flight = backend.gate.in_flight + backend.awaiting_turn
                # remote_up's first test inline: it holds for every request while all is well.
                view.healthy = backend.unusable is None and (
                    backend.probed_up is not False or remote_up(backend, now)
                )
        return views

    def can_take(self, processes: Mapping[str, BackendProcess], now: float) -> bool:
        """Whether a request sent to this model now would find an upstream to pick (the
        test a fallback passes before a request moves to it)."""
        standing = self.balancer.standing
        usable = (Standing.IN_ROTATION, Standing.PROBE_DUE)
        return any(
            healthy and standing(backend.role, now) in usable
            for backend, healthy in zip(
                self.replicas, up_replicas(self.replicas, processes, now), strict=True
            )
        )


# How /v1/backends/health tells a replica's standing: one whose probe is due is still out.
_STANDING_SHOWN = {
    Standing.IN_ROTATION: "in_rotation",
    Standing.COOLING: "cooling",
    Standing.PROBE_DUE: "cooling",
    Standing.PROBING: "probing",
}


def replica_standing(backend: Backend, report: dict[str, object], now: float) -> None:
    """Add to ``backend``'s health report the group it is a replica of and its standing
    with the balancer (in_rotation, cooling, probing)."""
    group = backend.entry.replica_group
    if group is not None:
        report["replica_of"] = group
    if backend.balancer is not None:
        report["balancer"] = _STANDING_SHOWN[backend.balancer.standing(backend.role, now)]


def up_replicas(
    replicas: Sequence[Backend], processes: Mapping[str, BackendProcess], now: float
) -> list[bool]:
    """Whether each replica may take a request ``now``.

    A server elsewhere: unless its last health probe, less than its cooldown_s ago, failed
    (the balancer learns the rest from the requests' outcomes; nothing probes its health
    again until someone asks, so an older probe is not believed: a server back up would
    stay out for good). One started here: when it is loaded; one being loaded only when no
    loaded replica has a free slot, so that a request never waits for a load while another
    replica could answer it at once; one stopped only when no replica loaded or being
    loaded has a free slot (the requests a load will serve wait for it), so that replicas
    are loaded on demand one by one, when those loaded are all busy, never all at once
    for a burst. A failed or stopping process takes none.
    """
    states: list[str | None] = []
    loaded_free = starting_free = False  # a replica in that state has a free slot
    for backend in replicas:
        if backend.unusable is not None:
            states.append("unusable")  # neither loaded nor loadable
            continue
        process = processes.get(backend.role) if backend.entry.started_here else None
        state: str | None = None if process is None else process.state
        # Those waiting (for a slot, or for the scheduler to load it) take the free slots.
        in_flight = backend.gate.active + backend.gate.waiting + backend.awaiting_turn
        if state == _STOPPED and in_flight > 0:
            state = _STARTING  # a request for it is in the way of starting it
        states.append(state)
        if in_flight < backend.entry.max_concurrency:
            if state == _LOADED:
                loaded_free = True
            elif state == _STARTING:
                starting_free = True
    up: list[bool] = []
    for backend, state in zip(replicas, states, strict=True):
        if state is None:
            up.append(remote_up(backend, now))
        elif state == _STARTING:
            up.append(not loaded_free)
        else:
            up.append(
                state == _LOADED or (state == _STOPPED and not (loaded_free or starting_free))
            )
    return up


def remote_up(backend: Backend, now: float) -> bool:
    """Whether a server elsewhere may take a request ``now`` (see ``up_replicas``)."""
    return backend.probed_up is not False or now - backend.probed_at >= backend.entry.cooldown_s
