"""What a config reload changes: a pure comparison of the running config and the new one.

Each role is one of:
- ``unchanged``: its process, its slots and its requests in flight go on untouched;
- ``added``: a new running entry (or one enabled again): started as at launch, or left
  unloaded if ``on_demand``;
- ``removed``: gone from the file, or disabled: it takes no new requests, finishes those
  in flight, then stops;
- ``replaced``: a field its backend process is started with changed (its command line,
  port, model, ...): the old process drains and stops, then a new one starts;
- ``updated``: only fields the router alone reads changed (timeouts, TTL, pinning, ...):
  applied at once, the process keeps running.

Router settings are applied at once, except the address the router listens on and the
Responses store, which only a restart can change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from slm_server.config import ConfigFile, ModelEntry
from slm_server.supervisor.logs import log_file_name

RoleChange = Literal["unchanged", "added", "removed", "replaced", "updated"]

# The entry fields only the router reads: none reaches the backend's command line or
# environment (see backends.launch_spec), so a change to them needs no new process.
ROUTER_SIDE_FIELDS = frozenset(
    {
        "default_timeout",
        "idle_ttl_s",
        "pinned",
        "on_demand",
        "memory_gb",
        "supports_function_calling",
    }
)

# Router settings the running server cannot take without a restart: the listening socket
# is bound once, and the Responses store holds the conversations so far (another store
# would lose them, or mix them up).
RESTART_FIELDS = (
    "host",
    "port",
    "response_store_mb",
    "response_store_url",
    "response_store_password_env",
    "response_store_ttl_s",
)


@dataclass(frozen=True)
class ReloadPlan:
    roles: dict[str, RoleChange]  # every role of either config, in the new config's order
    router_changed: tuple[str, ...]  # router settings applied at once
    restart_needed: tuple[str, ...]  # router settings that wait for a restart

    def as_answer(self) -> dict[str, Any]:
        """The reload's JSON answer."""
        return {
            "roles": dict(self.roles),
            "router": {
                "changed": list(self.router_changed),
                "restart_needed": list(self.restart_needed),
            },
        }


def plan_reload(old: ConfigFile, new: ConfigFile) -> ReloadPlan:
    """What going from ``old`` to ``new`` does to each role and to the router's settings."""
    roles: dict[str, RoleChange] = {}
    for role in [*new.models, *(r for r in old.models if r not in new.models)]:
        roles[role] = role_change(old.models.get(role), new.models.get(role))
    changed = [
        name
        for name in type(new.router).model_fields
        if getattr(old.router, name) != getattr(new.router, name)
    ]
    return ReloadPlan(
        roles,
        tuple(name for name in changed if name not in RESTART_FIELDS),
        tuple(name for name in changed if name in RESTART_FIELDS),
    )


def role_change(old: ModelEntry | None, new: ModelEntry | None) -> RoleChange:
    """What happens to one role whose entry goes from ``old`` to ``new`` (None: absent)."""
    was_running = old is not None and old.enabled
    runs = new is not None and new.enabled
    if not was_running and not runs:
        return "unchanged"  # nothing ran, nothing will
    if not was_running:
        return "added"
    if not runs:
        return "removed"
    assert old is not None and new is not None
    differ = changed_fields(old, new)
    if not differ:
        return "unchanged"
    return "updated" if differ <= ROUTER_SIDE_FIELDS else "replaced"


def changed_fields(old: ModelEntry, new: ModelEntry) -> frozenset[str]:
    values_old: Mapping[str, object] = old.model_dump()
    values_new: Mapping[str, object] = new.model_dump()
    return frozenset(name for name in values_new if values_old.get(name) != values_new[name])


def held_by_stopping(
    old: Mapping[str, ModelEntry],
    new: Mapping[str, ModelEntry],
    changes: Mapping[str, RoleChange],
) -> dict[str, tuple[str, ...]]:
    """For each role that starts a new backend (added or replaced, as ``changes`` says of
    the processes): the roles being stopped (removed or replaced) whose backend holds its
    port or writes its log file until then.

    Started beside them, it would fail on the port in use and give up for a while: a role
    renamed with its port kept, or two models that swap ports, is an everyday edit.
    """
    stopping = [role for role, change in changes.items() if change in ("removed", "replaced")]
    held: dict[str, tuple[str, ...]] = {}
    for role, change in changes.items():
        if change not in ("added", "replaced"):
            continue
        entry = new[role]
        blockers = tuple(
            other
            for other in stopping
            if other != role
            and (old[other].port == entry.port or log_file_name(old[other]) == log_file_name(entry))
        )
        if blockers:
            held[role] = blockers
    return held
