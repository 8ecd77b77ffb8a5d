"""Checks that need the whole validated file: paths, ports, IDs, combinations.

None of these stop loading: the router can run while backends live
elsewhere. ``check-config`` exits non-zero on any error among them. Entry
checks on a disabled entry are warnings, since nothing starts it.
"""

from __future__ import annotations

from pathlib import Path

from slm_server.config.paths import (
    ModelPathError,
    resolve_local,
    resolve_mmproj,
    resolve_model_path,
)
from slm_server.config.problems import Problem, Severity
from slm_server.config.replicas import REPLICA_MARK, as_written
from slm_server.config.schema import (
    COMMAND_AND_OPENAI_FIELDS,
    COMMAND_ONLY_FIELDS,
    LIFECYCLE_FIELDS,
    LISTEN_FIELDS,
    LLAMACPP_ONLY_FIELDS,
    MLX_ONLY_FIELDS,
    OPENAI_ONLY_FIELDS,
    SUPPORTED_MODEL_TYPES,
    ConfigFile,
    ModelEntry,
)
from slm_server.config.upstream_checks import fallback_problems, spread_problems

_MAX_PORT = 65535
# The fields only one backend kind reads; written on another kind's entry they do nothing.
_OWN_FIELDS = {
    "llamacpp": LLAMACPP_ONLY_FIELDS,
    "mlx": MLX_ONLY_FIELDS,
    "command": COMMAND_ONLY_FIELDS,
    "openai": OPENAI_ONLY_FIELDS,
    "command and openai": COMMAND_AND_OPENAI_FIELDS,
}
# What a server slm_server does not start has no use for: written, it is ignored (a
# warning, not an error, so that an entry moved to another machine needs one change).
_NOT_FOR_REMOTE = (*LIFECYCLE_FIELDS, *LISTEN_FIELDS, "extra_args", "model_path")


def check_config(config: ConfigFile, file: Path, base_dir: Path) -> list[Problem]:
    """Every non-fatal problem of ``config``, entry by entry, then across entries."""
    problems: list[Problem] = []
    for role, entry in as_written(config.models):
        problems.extend(check_entry(role, entry, file, base_dir))
        problems.extend(spread_problems(role, entry, file))
    problems.extend(_check_ports(config, file))
    problems.extend(fallback_problems(config, file))
    problems.extend(_check_ids(config, file))
    if not any(entry.enabled for entry in config.models.values()):
        problems.append(Problem("warning", file, None, None, "models", "no model is enabled"))
    return problems


def check_entry(role: str, entry: ModelEntry, file: Path, base_dir: Path) -> list[Problem]:
    """Problems of one entry on its own: model path, port range, type, stray fields."""
    severity: Severity = "error" if entry.enabled else "warning"
    found: list[tuple[Severity, str, str]] = []
    try:
        if entry.backend not in ("command", "openai") or (
            entry.backend == "command" and entry.model_path is not None
        ):
            resolve_model_path(entry, base_dir)
    except ModelPathError as exc:
        found.append((severity, "model_path", str(exc)))
    found.extend(_projector_problems(entry, base_dir, severity))
    if entry.port is not None and entry.started_here and not 1 <= entry.port <= _MAX_PORT:
        found.append((severity, "port", f"{entry.port} is out of range 1..{_MAX_PORT}"))
    supported = SUPPORTED_MODEL_TYPES[entry.backend]
    if entry.model_type not in supported:
        found.append(
            (
                severity,
                "model_type",
                f"{entry.model_type} is not supported by backend {entry.backend}; "
                f"it serves: {', '.join(sorted(supported))}",
            )
        )
    for other, fields in _OWN_FIELDS.items():
        for name in fields if entry.backend not in other.split(" and ") else ():
            if _is_set(entry, name):
                found.append(
                    ("warning", name, f"applies to {other} only; ignored for {entry.backend}")
                )
    if not entry.started_here:
        found += [
            ("warning", name, f"ignored for {entry.backend}: slm_server does not start its server")
            for name in _NOT_FOR_REMOTE
            if _is_set(entry, name)
        ]
    if entry.pooling is not None and entry.model_type != "embeddings":
        found.append(("warning", "pooling", "applies to model_type embeddings only; ignored"))
    template = entry.chat_template_file
    if entry.backend == "llamacpp" and template is not None:
        path = resolve_local(template, base_dir)
        if not path.is_file():
            found.append((severity, "chat_template_file", f"{path} does not exist"))
    return [Problem(sev, file, role, entry.id, name, text) for sev, name, text in found]


def _projector_problems(
    entry: ModelEntry, base_dir: Path, severity: Severity
) -> list[tuple[Severity, str, str]]:
    if entry.backend != "llamacpp" or entry.model_type != "multimodal":
        return []  # a stray mmproj is a schema-level error (validation.py)
    try:
        projector = resolve_mmproj(entry, base_dir)
    except ModelPathError as exc:
        return [(severity, "mmproj", str(exc))]
    model_path = entry.model_path
    if (
        projector is None
        and model_path is not None
        and resolve_local(model_path, base_dir).exists()
    ):
        return [
            (
                "warning",
                "mmproj",
                "no projector: the model answers text only; set mmproj, or put the "
                "projector (a .gguf named *mmproj*) in model_path's directory",
            )
        ]
    return []


def _is_set(entry: ModelEntry, name: str) -> bool:
    """Written in the file with a value other than the default (``null`` is harmless)."""
    default = ModelEntry.model_fields[name].default
    return name in entry.model_fields_set and getattr(entry, name) != default


def _check_ports(config: ConfigFile, file: Path) -> list[Problem]:
    problems: list[Problem] = []
    owner: dict[int, str] = {}
    for role, entry in config.models.items():
        if not entry.enabled or entry.port is None or not entry.started_here:
            continue
        if entry.port == config.router.port:
            problems.append(
                Problem(
                    "error",
                    file,
                    role,
                    entry.id,
                    "port",
                    f"port {entry.port} is the router's own port (router.port)",
                )
            )
        if entry.port in owner:
            problems.append(
                Problem(
                    "error",
                    file,
                    role,
                    entry.id,
                    "port",
                    f"port {entry.port} is also used by models.{_named(owner[entry.port])}; "
                    "every enabled model needs its own port",
                )
            )
        else:
            owner[entry.port] = role
    return problems


def _named(role: str) -> str:
    """A role as the user wrote it: a replica's says which entry it comes from."""
    group, mark, index = role.rpartition(REPLICA_MARK)
    return f"{role} (replica {index} of {group})" if mark else role


def _check_ids(config: ConfigFile, file: Path) -> list[Problem]:
    problems: list[Problem] = []
    first_role: dict[str, str] = {}
    for role, entry in as_written(config.models):  # a group's replicas serve one id
        if not entry.enabled:
            continue
        if entry.id in first_role:
            problems.append(
                Problem(
                    "warning",
                    file,
                    role,
                    entry.id,
                    "id",
                    f"same id as models.{first_role[entry.id]}; requests for it will get 409",
                )
            )
        else:
            first_role[entry.id] = role
    return problems
