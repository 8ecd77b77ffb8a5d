"""The router with its scheduler, in process, over fake backends that are real subprocesses.

What ``serve`` runs (RouterApp + Supervisor through the ASGI lifespan), for many models at
once, each role with its own fake backend flags, and a restart policy short enough for
tests (a stop grace of seconds, not ten).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from config_builder import entry, make_config
from fake_backend_proc import SCRIPT
from net import eventually, free_port
from router_served import lifespan_client
from slm_server.backends.spec import LaunchSpec
from slm_server.config import ModelEntry
from slm_server.router.app import RouterApp
from slm_server.supervisor import BackendProcess, RestartPolicy, Supervisor

POLICY = RestartPolicy(
    startup_timeout_s=10, max_start_failures=2, backoff_s=(0.05,), stop_grace_s=1.5
)


def chat(model: str, content: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def model(role: str, **fields: Any) -> dict[str, Any]:
    """An entry for ``role`` (model id ``m-ROLE``) needing 1 GB, on demand unless told."""
    fields = {"on_demand": True, "memory_gb": 1, "default_timeout": 30, **fields}
    return entry(f"m-{role}", free_port(), **fields)


class Launcher:
    """Starts ``fake_backend.py`` for each role with that role's flags; ``flags`` may be
    changed between starts (a backend that cannot start, then can)."""

    def __init__(self, flags: Mapping[str, Sequence[str]] | None = None) -> None:
        self.flags: dict[str, list[str]] = {role: list(f) for role, f in (flags or {}).items()}
        self.broken: set[str] = set()  # roles whose backend exits at once

    def __call__(self, role: str, entry: ModelEntry) -> LaunchSpec:
        if role in self.broken:
            return LaunchSpec([sys.executable, "-c", "print('gguf: bad magic'); exit(2)"])
        flags = self.flags.get(role, [])
        return LaunchSpec([sys.executable, str(SCRIPT), "--port", str(entry.port), *flags])


@dataclass
class Served:
    client: httpx.AsyncClient
    app: RouterApp
    supervisor: Supervisor

    def process(self, role: str) -> BackendProcess:
        return self.supervisor.processes[role]

    async def health(self, role: str) -> dict[str, Any]:
        response = await self.client.get("/v1/backends/health")
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()[role]
        return report

    async def statuses(self) -> dict[str, str]:
        """``GET /v1/models``: model id -> status."""
        response = await self.client.get("/v1/models")
        assert response.status_code == 200, response.text
        return {m["id"]: m["status"] for m in response.json()["data"]}

    async def ready(self, role: str, within_s: float = 10) -> int:
        """Wait for ``role`` to be ready; its PID."""
        process = self.process(role)
        await eventually(lambda: process.state == "ready", within_s, f"{role} ready")
        assert process.pid is not None
        return process.pid

    def backend_url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.process(role).entry.port}"


@asynccontextmanager
async def serving(
    tmp_path: Path,
    models: Mapping[str, dict[str, Any]],
    launcher: Launcher | None = None,
    policy: RestartPolicy = POLICY,
    **router: Any,
) -> AsyncIterator[Served]:
    """The app through its lifespan as uvicorn drives it; backends stopped on the way out."""
    config = make_config(dict(models), **router)
    supervisor = Supervisor(config, launcher or Launcher(), tmp_path / "logs", policy)
    app = RouterApp(config, supervisor)
    async with lifespan_client(app, timeout_s=30) as client:
        yield Served(client, app, supervisor)
