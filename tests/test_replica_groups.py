"""The routing table's replica groups, and which replicas may take a request: plain calls
on tables built from YAML, no server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from config_builder import entry, load_models
from slm_server.balance import Standing, Strategy, Unavailable
from slm_server.router.errors import AmbiguousModel
from slm_server.router.failover import response_id_of
from slm_server.router.replicas import ReplicaGroup, up_replicas
from slm_server.router.routing import Backend, RoutingTable
from slm_server.supervisor import BackendProcess

CHAT = "/v1/chat/completions"


def remote(model_id: str, *urls: str, **fields: Any) -> dict[str, Any]:
    many = {"base_urls": list(urls)} if len(urls) > 1 else {"base_url": urls[0]}
    return {"id": model_id, "backend": "openai", "default_timeout": 5, **many, **fields}


def processes(**states: str) -> dict[str, BackendProcess]:
    """Stand-ins for the supervisor's processes: only their state is read."""
    return {role: cast(BackendProcess, SimpleNamespace(state=s)) for role, s in states.items()}


def test_a_group_is_one_route_with_a_balancer_of_its_settings(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        gemma=remote("gemma", "http://a:1", "http://b:1", balance="round_robin", retries=2),
    )
    table = RoutingTable(config)
    route = table.lookup("gemma", CHAT)  # not ambiguous: its replicas are one route
    assert isinstance(route, ReplicaGroup)
    assert [b.role for b in route.replicas] == ["gemma@0", "gemma@1"]
    assert route.settings.strategy is Strategy.ROUND_ROBIN and route.settings.retries == 2
    assert all(b.balancer is route.balancer for b in route.replicas)
    assert [b.upstream_header[1] for b in route.replicas] == [b"gemma/0", b"gemma/1"]
    assert table.model_ids == ["gemma"]


def test_two_entries_of_one_id_are_still_ambiguous(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        one=remote("gemma", "http://a:1", "http://b:1"),
        two=remote("gemma", "http://c:1"),
    )
    with pytest.raises(AmbiguousModel):
        RoutingTable(config).lookup("gemma", CHAT)


def test_only_entries_with_fallbacks_or_replicas_are_balanced(tmp_path: Path) -> None:
    config = load_models(
        tmp_path,
        main=remote("main", "http://a:1", fallbacks=["spare"]),
        spare=remote("spare", "http://b:1"),
    )
    table = RoutingTable(config)
    main = table.lookup("main", CHAT)
    assert isinstance(main, ReplicaGroup) and len(main.replicas) == 1
    spare = table.lookup("spare", CHAT)
    assert isinstance(spare, Backend) and spare.balancer is None  # the plain path
    assert table.fallbacks_of == {"main": ("spare",), "spare": ()}
    as_fallback = table.balanced("spare", CHAT)  # a group of one when a request falls back
    assert as_fallback.replicas == [spare] and table.balanced("spare", CHAT) is as_fallback


def test_a_reload_keeps_the_balancer_of_a_group_that_stays(tmp_path: Path) -> None:
    before = load_models(tmp_path, gemma=remote("gemma", "http://a:1", "http://b:1", "http://c:1"))
    old = RoutingTable(before)
    group = old.groups["gemma"]
    for role in ("gemma@1", "gemma@2"):
        for _ in range(3):
            group.balancer.cooldowns.failed(role, 0.0, probe=False)
    after = load_models(tmp_path, gemma=remote("gemma", "http://a:1", "http://b:1"))
    kept = {role: old.backends[role] for role in after.models}
    new = RoutingTable(after, kept, kept_groups=old.groups)
    balancer = new.groups["gemma"].balancer
    assert balancer is group.balancer
    assert balancer.standing("gemma@1", 1.0) is Standing.COOLING  # still out
    assert balancer.cooldowns.cooling_until("gemma@2") is None  # gone, forgotten


def test_loaded_replicas_take_requests_and_others_only_when_they_are_busy(
    tmp_path: Path,
) -> None:
    config = load_models(tmp_path, gemma=entry("gemma", 9100, replicas=3, max_concurrency=1))
    table = RoutingTable(config)
    replicas = table.groups["gemma"].replicas
    ready_stopped = processes(**{"gemma@0": "ready", "gemma@1": "stopped", "gemma@2": "failed"})
    assert up_replicas(replicas, ready_stopped, 0.0) == [True, False, False]
    assert replicas[0].gate.try_acquire()  # busy now: the stopped one may be loaded
    assert up_replicas(replicas, ready_stopped, 0.0) == [True, True, False]
    none_loaded = processes(**{"gemma@0": "stopped", "gemma@1": "stopping", "gemma@2": "stopped"})
    assert up_replicas(replicas, none_loaded, 0.0) == [True, False, True]


def test_a_failed_health_probe_keeps_a_server_elsewhere_out_for_its_cooldown(
    tmp_path: Path,
) -> None:
    config = load_models(tmp_path, gemma=remote("gemma", "http://a:1", "http://b:1", cooldown_s=10))
    replicas = RoutingTable(config).groups["gemma"].replicas
    replicas[1].probed_up, replicas[1].probed_at = False, 100.0
    assert up_replicas(replicas, {}, 105.0) == [True, False]
    assert up_replicas(replicas, {}, 111.0) == [True, True]  # stale: requests find out


def test_the_balancer_sees_each_upstream_as_its_gate_and_up_replicas_say(
    tmp_path: Path,
) -> None:
    """Servers elsewhere are judged one by one, without up_replicas: the same answer, for
    a failed probe, a stale one and an unusable server; and the view of local replicas."""
    config = load_models(
        tmp_path,
        far=remote(
            "far", "http://a:1", "http://b:1", "http://c:1", cooldown_s=10, max_concurrency=2
        ),
        near=entry("near", 9100, replicas=2, max_concurrency=1),
    )
    table = RoutingTable(config)
    far, near = table.groups["far"], table.groups["near"]
    far.replicas[1].probed_up, far.replicas[1].probed_at = False, 100.0
    far.replicas[2].unusable = "no key"
    assert far.replicas[0].gate.try_acquire() and far.replicas[0].gate.try_acquire()
    for now in (105.0, 111.0):
        views = far.upstreams({}, now)
        assert [(v.id, v.in_flight) for v in views] == [("far@0", 2), ("far@1", 0), ("far@2", 0)]
        assert [v.healthy for v in views] == up_replicas(far.replicas, {}, now)
    assert [v.healthy for v in far.upstreams({}, 105.0)] == [True, False, False]
    states = processes(**{"near@0": "ready", "near@1": "stopped"})
    assert [v.healthy for v in near.upstreams(states, 0.0)] == [True, False]
    assert near.replicas[0].gate.try_acquire()  # busy: the stopped one may be loaded
    views = near.upstreams(states, 0.0)
    assert [(v.in_flight, v.healthy) for v in views] == [(1, True), (0, True)]


@pytest.mark.parametrize(
    ("piece", "expected"),
    [
        (b'{"id": "resp_1", "object": "response"}', "resp_1"),
        (b'event: response.created\ndata: {"response": {"id": "resp_2"}}\n\n', "resp_2"),
        (b'data: {"type": "response.created", "response": {"id": "resp_3"}}\n\n', "resp_3"),
        (b'{"error": {"message": "no"}}', None),
        (b'event: response.created\ndata: {"respo', None),  # cut across pieces
        (b"", None),
    ],
)
def test_a_responses_answers_id_is_read_from_its_first_piece(
    piece: bytes, expected: str | None
) -> None:
    assert response_id_of(piece) == expected


def test_a_burst_on_a_cold_group_loads_one_replica_until_its_slots_are_taken(
    tmp_path: Path,
) -> None:
    config = load_models(tmp_path, gemma=entry("gemma", 9100, replicas=3, max_concurrency=2))
    group = RoutingTable(config).groups["gemma"]
    states = {"gemma@0": "stopped", "gemma@1": "stopped", "gemma@2": "stopped"}
    went = []
    for _ in range(3):  # each request holds a slot of the replica it went to, then starts it
        pick = group.balancer.pick(group.upstreams(processes(**states), 0.0), 0.0)
        assert not isinstance(pick, Unavailable)
        went.append(pick.upstream)
        assert group.replica(pick.upstream).gate.try_acquire()
        if states[pick.upstream] == "stopped":
            # Still stopped a moment, its slot taken: no other stopped one is started for now.
            up = up_replicas(group.replicas, processes(**states), 0.0)
            others = [role for role, state in states.items() if state == "stopped"]
            assert not any(up[int(role[-1])] for role in others if role != pick.upstream)
            states[pick.upstream] = "starting"
    # The first two wait for the one being loaded; the third finds it full and starts another.
    assert went[0] == went[1] != went[2]
    assert sorted(states.values()) == ["starting", "starting", "stopped"]


def test_a_request_waiting_for_the_scheduler_to_load_a_replica_holds_its_slot(
    tmp_path: Path,
) -> None:
    config = load_models(tmp_path, gemma=entry("gemma", 9100, replicas=2, max_concurrency=1))
    replicas = RoutingTable(config).groups["gemma"].replicas
    starting = processes(**{"gemma@0": "starting", "gemma@1": "stopped"})
    assert up_replicas(replicas, starting, 0.0) == [True, False]  # its slot is free: wait
    replicas[0].awaiting_turn += 1  # a request for it waits to be let in, not in its gate
    assert up_replicas(replicas, starting, 0.0) == [True, True]  # full: the next may start
