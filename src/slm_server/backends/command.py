"""``backend: command``: any server, started from the command line its entry gives.

The router knows nothing of the program but what the entry says: the port it listens
on, the path that answers once it is ready, the signal that stops it. So that a request
never depends on an endpoint the program may lack, the Responses and Anthropic
Messages endpoints are converted to chat completions unless the entry lists them in
``native_endpoints``: a server without them may answer 405 or 400 rather than the 404
the router learns from, and one that has them may keep its own conversation state,
which the router's store (``previous_response_id``, scoped by API key) knows nothing of.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import LoadedConfig, ModelEntry, Problem
from slm_server.config.command_line import fill_in, stop_signal, used_placeholders
from slm_server.config.paths import resolve_local, resolve_model_path
from slm_server.config.replicas import as_written

# Always sent as they are: the target of every conversion, and never converted itself.
_ALWAYS_NATIVE = frozenset({"/v1/chat/completions"})


def find_program(program: str, base_dir: Path, search_path: str | None = None) -> str | None:
    """The executable ``program`` names, or None when there is none.

    A bare name is looked up on ``search_path`` (default: this process's PATH); a path
    (``./bin/server``) resolves against the config's base directory, like ``model_path``.
    """
    if os.sep not in program and (os.altsep is None or os.altsep not in program):
        return shutil.which(program, path=search_path)
    path = resolve_local(program, base_dir)
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def argv(entry: ModelEntry, base_dir: Path) -> list[str]:
    """``entry.command`` with its placeholders filled in (the program left as written)."""
    if entry.command is None:
        raise BackendUnsupported("a command entry needs `command`")
    values = {
        "port": str(entry.port),
        "host": entry.host,
        "id": entry.id,
        "context_length": "" if entry.context_length is None else str(entry.context_length),
        "model_path": "",
    }
    if "model_path" in used_placeholders(entry.command):
        values["model_path"] = resolve_model_path(entry, base_dir).value  # a ValueError
    return fill_in(entry.command, values) + entry.extra_args


def launch_spec(entry: ModelEntry, base_dir: Path) -> LaunchSpec:
    """How to start ``entry``; BackendUnsupported (``command not found: vllm``) when its
    program is not there, so that health says so rather than an OSError's errno."""
    command = argv(entry, base_dir)
    # A PATH in the entry's env is the one the program is run with: looked up there too.
    program = find_program(command[0], base_dir, entry.env.get("PATH"))
    if program is None:
        raise BackendUnsupported(f"command not found: {command[0]}")
    return LaunchSpec(
        [program, *command[1:]],
        env=dict(entry.env),
        health_path=entry.health_path,
        native_endpoints=_ALWAYS_NATIVE | frozenset(entry.native_endpoints),
        stop_signal=stop_signal(entry.stop_signal),
        ready_timeout_s=entry.ready_timeout_s,
    )


def installation_problems(config: LoadedConfig) -> list[Problem]:
    """A warning for each enabled command entry whose program is not found here.

    Warnings, not errors: the program may be installed after the check, or be found on
    the PATH the server will run with, which need not be this shell's.
    """
    problems: list[Problem] = []
    for role, entry in as_written(config.models):
        if not entry.enabled or entry.backend != "command" or entry.command is None:
            continue
        program = entry.command[0]
        if find_program(program, config.base_dir, entry.env.get("PATH")) is None:
            where = "on PATH" if os.sep not in program else "or not executable"
            message = f"command not found {where}: {program}; starting this model will fail"
            problems.append(Problem("warning", config.path, role, entry.id, "command", message))
    return problems
