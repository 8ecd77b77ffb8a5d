"""How to launch each kind of backend: command line, readiness check, capabilities."""

from __future__ import annotations

import os
from pathlib import Path

from slm_server.backends import command, llamacpp, mlx, openai
from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import LoadedConfig, ModelEntry, Problem

__all__ = ["BackendUnsupported", "LaunchSpec", "installation_problems", "launch_spec"]


def launch_spec(entry: ModelEntry, base_dir: Path) -> LaunchSpec:
    """How to start ``entry``'s server; BackendUnsupported when it cannot be started here."""
    if entry.backend == "llamacpp":
        return llamacpp.launch_spec(entry, base_dir)
    if entry.backend == "mlx":
        return mlx.launch_spec(entry, base_dir)
    if entry.backend == "command":
        return command.launch_spec(entry, base_dir)
    if not entry.started_here:
        where = entry.server_url
        raise BackendUnsupported(f"{entry.id} runs elsewhere ({where}): it is not started here")
    raise BackendUnsupported(f"starting {entry.backend} backends is not supported")


def installation_problems(config: LoadedConfig) -> list[Problem]:
    """What keeps this machine from starting or reaching the enabled entries (e.g. a
    llama-server that fails its check here, a command's program not found, an openai
    entry's key not set), for ``check-config``."""
    return (
        _llama_server_problems(config)
        + command.installation_problems(config)
        + openai.setup_problems(config, os.environ)
    )


def _llama_server_problems(config: LoadedConfig) -> list[Problem]:
    llamacpp_roles = [
        role
        for role, entry in config.models.items()
        if entry.enabled and entry.backend == "llamacpp"
    ]
    if not llamacpp_roles:
        return []
    try:
        found = llamacpp.find_llama_server()
    except BackendUnsupported as exc:
        problem = str(exc)
    else:
        if found is not None or llamacpp.python_server_available():
            return []
        problem = llamacpp.NO_SERVER
    where = f"llama-server (for models {', '.join(llamacpp_roles)}): {problem}"
    return [Problem("error", config.path, None, None, None, where)]
