"""A router served from a config file, in process under uvicorn on a loopback socket (a
stream reaches the client piece by piece, as it would in use), over fake backends that are
real subprocesses: what config reload tests need (the file to rewrite, the app to reload).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from config_builder import entry
from net import free_port
from on_demand_serving import POLICY, Launcher, Served
from router_served import served
from slm_server.config import load_config
from slm_server.router.app import RouterApp
from slm_server.supervisor import Supervisor


def model(tmp_path: Path, role: str, **fields: Any) -> dict[str, Any]:
    """An entry for ``role`` (id ``m-ROLE``) started at launch, its GGUF a stub file."""
    gguf = tmp_path / f"{role}.gguf"
    gguf.write_bytes(b"GGUF")  # never read: memory_gb replaces the estimate
    fields = {"memory_gb": 1, "default_timeout": 30, **fields}
    return entry(f"m-{role}", free_port(), model_path=str(gguf), **fields)


def write_config(path: Path, models: dict[str, dict[str, Any]], **router: Any) -> Path:
    path.write_text(yaml.safe_dump({"models": models, "router": router}))
    return path


@asynccontextmanager
async def served_from(path: Path, launcher: Launcher | None = None) -> AsyncIterator[Served]:
    """The app serving ``path``'s config through its lifespan; backends stopped after."""
    config = load_config(path)
    supervisor = Supervisor(config, launcher or Launcher(), path.parent / "logs", POLICY)
    app = RouterApp(config, supervisor)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield Served(client, app, supervisor)
