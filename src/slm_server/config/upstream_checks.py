"""Checks of how an entry spreads its requests: over its upstreams, then to fallbacks."""

from __future__ import annotations

from pathlib import Path

from slm_server.config.problems import Problem, Severity
from slm_server.config.replicas import as_written
from slm_server.config.schema import SPREAD_FIELDS, ConfigFile, ModelEntry


def spread_problems(role: str, entry: ModelEntry, file: Path) -> list[Problem]:
    """Balancing fields written on an entry with one upstream: they do nothing there."""
    if entry.upstream_count > 1 or entry.replica_group is not None:
        return []
    return [
        Problem(
            "warning",
            file,
            role,
            entry.id,
            name,
            "applies to entries with several upstreams (replicas or base_urls); this one "
            "has one, so it is ignored",
        )
        for name in SPREAD_FIELDS
        if name in entry.model_fields_set
        and getattr(entry, name) != ModelEntry.model_fields[name].default
    ]


def fallback_problems(config: ConfigFile, file: Path) -> list[Problem]:
    """Fallbacks that name no enabled model, the entry's own model, or one that cannot
    serve what the entry serves. One report per entry as written, not per replica."""
    types: dict[str, str] = {}
    for entry in config.models.values():
        if entry.enabled:
            types.setdefault(entry.id, entry.model_type)
    problems: list[Problem] = []
    for role, entry in as_written(config.models):
        severity: Severity = "error" if entry.enabled else "warning"
        for model in entry.fallbacks:
            if model == entry.id:
                message = f"{model} is this entry's own model; a fallback is another one"
            elif model not in types:
                known = ", ".join(sorted(types)) or "none"
                message = f"no enabled model has the id {model}; enabled: {known}"
            elif types[model] != entry.model_type:
                message = (
                    f"{model} has model_type {types[model]} and this entry "
                    f"{entry.model_type}: it cannot answer the same requests"
                )
            else:
                continue
            problems.append(Problem(severity, file, role, entry.id, "fallbacks", message))
    return problems
