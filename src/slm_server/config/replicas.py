"""Replicated entries: one written entry, one role per server.

An entry with `replicas: N` (servers started here) or N `base_urls` (servers elsewhere)
becomes N entries under the roles `<role>@0` .. `<role>@<N-1>`, each with one server: its
own port (`port + i`) or base_url. Everything that runs, watches or reloads servers
(supervisor, scheduler, health, logs, reload) then deals with one server per role, as
for any entry; only routing knows that the roles of a group serve one model together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from slm_server.config.schema import ModelEntry

REPLICA_MARK = "@"  # refused in role names as written, so a replica's role is never taken


def replica_role(group: str, index: int) -> str:
    return f"{group}{REPLICA_MARK}{index}"


def expand_replicas(models: Mapping[str, ModelEntry]) -> dict[str, ModelEntry]:
    """``models`` with each entry of several upstreams replaced by one entry per upstream,
    in place (the order of the file kept). Entries already expanded stay as they are."""
    expanded: dict[str, ModelEntry] = {}
    for role, entry in models.items():
        if entry.upstream_count == 1:
            expanded[role] = _single(entry)
            continue
        for index in range(entry.upstream_count):
            expanded[replica_role(role, index)] = _replica(entry, role, index)
    return expanded


def replica_groups(models: Mapping[str, ModelEntry]) -> dict[str, tuple[str, ...]]:
    """Group role -> the roles of its replicas, in order, for expanded ``models``."""
    groups: dict[str, list[str]] = {}
    for role, entry in models.items():
        if entry.replica_group is not None:
            groups.setdefault(entry.replica_group, []).append(role)
    return {group: tuple(roles) for group, roles in groups.items()}


def as_written(models: Mapping[str, ModelEntry]) -> Iterator[tuple[str, ModelEntry]]:
    """(role, entry) once per entry of the file: a group by its first replica, under the
    group's role. For checks of what was written, which would repeat per replica."""
    for role, entry in models.items():
        if not entry.replica:  # replicas 1.. repeat replica 0's fields
            yield entry.replica_group or role, entry


def _single(entry: ModelEntry) -> ModelEntry:
    if entry.base_urls is None:
        return entry
    # One server in base_urls is the same as base_url: no group of one.
    return entry.model_copy(update={"base_url": entry.base_urls[0], "base_urls": None})


def _replica(entry: ModelEntry, group: str, index: int) -> ModelEntry:
    if entry.base_urls is not None:
        update: dict[str, object] = {"base_url": entry.base_urls[index], "base_urls": None}
    else:
        assert entry.port is not None, "a replicated entry started here has a port"
        update = {"port": entry.port + index, "replicas": 1}
    replica = entry.model_copy(update=update)
    replica._replica_group = group
    replica._replica = index
    return replica
