"""slm_server's router as a target: its config and its process."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

from bench.procs import HOST, Started, spawn

MODEL_ID = "bench"

# The router checks API keys, as a team's would: two keys, every request carrying the
# first (scoped to the model); the second (admin) unloads and reads /metrics. The
# backend and nginx ignore the header.
API_KEY = "bench-key-7d1e0c5b9a3f4e62"
_ADMIN_KEY = "bench-admin-key-2c8f6a1d0e9b7354"
API_KEY_ENV = "SLM_BENCH_API_KEY"  # how chat.lua learns the key
AUTH_HEADERS = {"authorization": f"Bearer {API_KEY}"}
ADMIN_HEADERS = {"authorization": f"Bearer {_ADMIN_KEY}"}


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_config(tmp: Path, backend_port: int) -> Path:
    """A models.yaml routing the one model ``bench`` to the fake backend."""
    # The router never opens the model; the file only keeps the config valid.
    model = tmp / "bench.gguf"
    model.write_bytes(b"GGUF")
    entry = {
        "id": MODEL_ID,
        "backend": "llamacpp",
        "host": HOST,
        "port": backend_port,
        "model_path": str(model),
        "default_timeout": 60,
        "quantization": "Q4_K_M",
        # Admission control stays in the path but never queues: the load
        # generators' concurrency is what is measured, not the gate's.
        "max_concurrency": 1024,
    }
    return _write(tmp / "models.yaml", entry)


def write_openai_config(
    path: Path, backend_ports: list[int], cooldown_s: float | None = None
) -> Path:
    """A models.yaml serving ``bench`` from fake backends as servers elsewhere.

    One port gives ``base_url``; several give ``base_urls``, one replica each, with
    ``cooldown_s`` (the pause before a failed replica is probed again) when given.
    """
    urls = [f"http://{HOST}:{port}/v1" for port in backend_ports]
    entry: dict[str, object] = {"id": MODEL_ID, "backend": "openai"}
    if len(urls) == 1:
        entry["base_url"] = urls[0]
    else:
        entry["base_urls"] = urls
    if cooldown_s is not None:
        entry["cooldown_s"] = cooldown_s
    entry |= {"default_timeout": 60, "max_concurrency": 1024}
    return _write(path, entry)


def _write(path: Path, entry: dict[str, object]) -> Path:
    config = {
        "models": {"bench": entry},
        "router": {
            "max_queue": 100000,
            "api_keys": [
                {"name": "bench", "key_sha256": _sha256(API_KEY), "models": [MODEL_ID]},
                {"name": "ops", "key_sha256": _sha256(_ADMIN_KEY), "admin": True},
            ],
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_router(tmp: Path, config: Path, port: int, cpu: int | None, name: str) -> Started:
    # The venv's interpreter directly, not `uv run`: start-up time is the router's own.
    command = [
        sys.executable,
        "-m",
        "slm_server",
        "router",
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return spawn(name, command, tmp, cpu)
