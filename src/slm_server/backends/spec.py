"""What the supervisor needs to run a backend: a command line and how to tell it is ready."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class BackendUnsupported(Exception):
    """The entry asks for something this backend kind cannot do (a config problem)."""


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    # Taken out of the supervisor's environment before ``env`` is added (secrets, say).
    env_removed: frozenset[str] = frozenset()
    health_path: str = "/health"  # 200 here means ready to serve
    # Endpoints the server answers itself (the router converts for the others).
    native_endpoints: frozenset[str] = frozenset()
    # For servers whose health check passes before the model is loaded: a POST
    # (path, JSON body) that must answer 200 too before the backend counts as ready.
    ready_request: tuple[str, dict[str, Any]] | None = None
    # The `model` value the server accepts, when it is not the entry's id: the
    # router rewrites requests to it.
    upstream_model: str | None = None
    # Asks the server to stop; SIGKILL follows after the supervisor's grace period.
    stop_signal: signal.Signals = signal.SIGTERM
    # Seconds the server may take to become ready; None: the supervisor's own limit.
    ready_timeout_s: float | None = None

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The backend's environment: ``inherited`` less ``env_removed``, plus ``env``."""
        kept = {name: value for name, value in inherited.items() if name not in self.env_removed}
        return {**kept, **self.env}
