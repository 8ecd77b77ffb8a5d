"""Schema validation that reports every problem of every entry, in plain words."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from slm_server.config.backend_flags import flag_clashes
from slm_server.config.problems import Problem
from slm_server.config.replicas import REPLICA_MARK
from slm_server.config.router_settings import ApiKey, RouterSettings
from slm_server.config.schema import ConfigFile, ModelEntry

_MAX_SHOWN = 60  # characters of a bad value quoted back in a message
# /admin/logs/{role} streams a backend's log, and /admin/logs/router the router's own.
RESERVED_ROLE = "router"
_RESERVED_ROLE_MESSAGE = (
    "the role name 'router' is taken by the router's own log (/admin/logs/router); "
    "give this model another role name"
)
# A replicated entry's servers are the roles <role>@0, <role>@1, ... (see replicas.py).
_REPLICA_MARK_MESSAGE = (
    f"'{REPLICA_MARK}' in a role name is kept for replicas (<role>{REPLICA_MARK}0, "
    f"<role>{REPLICA_MARK}1, ...); give this model a role name without it"
)


def validate_entries(
    models: Mapping[Any, Any], file: Path
) -> tuple[dict[str, ModelEntry], list[Problem]]:
    """Validate each entry on its own, so one bad entry hides no other's problems."""
    entries: dict[str, ModelEntry] = {}
    problems: list[Problem] = []
    for key, value in models.items():
        valid_name = isinstance(key, str) and key.strip() != ""
        role = key if valid_name else repr(key)
        if not valid_name:
            problems.append(_error(file, role, None, _role_name_message(key)))
        elif key == RESERVED_ROLE:
            problems.append(_error(file, role, None, _RESERVED_ROLE_MESSAGE))
        elif REPLICA_MARK in key:
            problems.append(_error(file, role, None, _REPLICA_MARK_MESSAGE))
        if not isinstance(value, Mapping):
            problems.append(
                _error(file, role, None, f"entry must be a mapping of fields, got {_shown(value)}")
            )
            continue
        entry_id = value.get("id")
        entry_id = entry_id if isinstance(entry_id, str) else None
        try:
            entry = ModelEntry.model_validate(value)
        except ValidationError as exc:
            problems.extend(
                _problem(error, ModelEntry, file, role, entry_id) for error in exc.errors()
            )
            continue
        entries[role] = entry
        problems.extend(
            Problem("error", file, role, entry.id, field, message)
            for field, message in _launch_field_problems(entry)
        )
    return entries, problems


def _launch_field_problems(entry: ModelEntry) -> list[tuple[str, str]]:
    """(field, message) for ``mmproj`` and ``extra_args`` values no backend could launch with.

    Errors whether or not the entry is enabled: they are mistakes in what was written,
    not in the machine (a missing file is checked later, by check_config).
    """
    found = [("extra_args", message) for message in flag_clashes(entry.backend, entry.extra_args)]
    if entry.mmproj is not None:
        if entry.backend == "mlx":
            found.append(("mmproj", "applies to llamacpp only; an mlx model holds its own"))
        elif entry.backend != "llamacpp":
            found.append(("mmproj", "applies to llamacpp only; pass it in `command`"))
        elif entry.model_type != "multimodal":
            found.append(("mmproj", "applies to model_type multimodal only"))
    return found


def validate_top_level(data: Mapping[Any, Any], file: Path) -> tuple[ConfigFile, list[Problem]]:
    """Validate everything except the entries (top-level keys, ``router:``)."""
    rest = {key: value for key, value in data.items() if key != "models"}
    problems: list[Problem] = []
    if "models" not in data:
        problems.append(
            _error(file, None, "models", "no `models:` section; it maps role names to entries")
        )
    try:
        return ConfigFile.model_validate({**rest, "models": {}}), problems
    except ValidationError as exc:
        problems.extend(_problem(error, ConfigFile, file, None, None) for error in exc.errors())
        return ConfigFile(models={}), problems


def _error(file: Path, role: str | None, field: str | None, message: str) -> Problem:
    return Problem("error", file, role, None, field, message)


def _problem(
    error: ErrorDetails, model: type[BaseModel], file: Path, role: str | None, entry_id: str | None
) -> Problem:
    loc = error["loc"]
    field = ".".join(str(part) for part in loc) or None
    # What is written under router.api_keys may be a key: never quoted back.
    secret = model is ConfigFile and loc[:2] == ("router", "api_keys")
    message = _message(error, _owner(model, loc), quote=not secret)
    return Problem("error", file, role, entry_id, field, message)


def _owner(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class whose field the last part of ``loc`` names."""
    if len(loc) == 1:
        return model
    if model is ConfigFile and len(loc) == 2 and loc[0] == "router":
        return RouterSettings
    if model is ConfigFile and len(loc) == 4 and loc[:2] == ("router", "api_keys"):
        return ApiKey
    return None


def _message(error: ErrorDetails, owner: type[BaseModel] | None, *, quote: bool = True) -> str:
    """The error in plain words; ``quote``: with the value found (``got ...``)."""
    kind = error["type"]
    name = str(error["loc"][-1]) if error["loc"] else ""
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field" + _suggestion(name, owner)
    if kind == "literal_error":
        allowed = _literal_values(owner, name) or str(error.get("ctx", {}).get("expected", ""))
        found = _shown(error["input"]) if quote else "the value"
        return f"{found} is not allowed; allowed values: {allowed}"
    text = error["msg"]
    if kind == "value_error":  # our own validators' messages: already plain words
        return text.removeprefix("Value error, ")
    if text.startswith("Input should be "):
        text = "must be " + text.removeprefix("Input should be ")
    return f"{text} (got {_shown(error['input'])})" if quote else text


def _suggestion(name: str, owner: type[BaseModel] | None) -> str:
    if owner is None:
        return ""
    close = difflib.get_close_matches(name, list(owner.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _literal_values(owner: type[BaseModel] | None, name: str) -> str | None:
    if owner is None or name not in owner.model_fields:
        return None
    annotation = owner.model_fields[name].annotation
    if typing.get_origin(annotation) is not typing.Literal:
        return None
    return ", ".join(str(value) for value in typing.get_args(annotation))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _role_name_message(key: object) -> str:
    message = "role name must be a non-empty string"
    if isinstance(key, bool):
        # YAML 1.1 reads unquoted on/off/yes/no/true/false as booleans.
        message += "; YAML reads an unquoted on/off/yes/no/true/false as a boolean: quote it"
    return message
