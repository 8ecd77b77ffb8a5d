"""How to launch each kind of backend: command line, readiness check, capabilities."""

from __future__ import annotations

from pathlib import Path

from slm_server.backends import llamacpp, mlx
from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import ModelEntry

__all__ = ["BackendUnsupported", "LaunchSpec", "launch_spec"]


def launch_spec(entry: ModelEntry, base_dir: Path) -> LaunchSpec:
    """How to start ``entry``'s server; BackendUnsupported when it cannot be started here."""
    if entry.backend == "llamacpp":
        return llamacpp.launch_spec(entry, base_dir)
    if entry.backend == "mlx":
        return mlx.launch_spec(entry, base_dir)
    raise BackendUnsupported(f"starting {entry.backend} backends is not supported")
