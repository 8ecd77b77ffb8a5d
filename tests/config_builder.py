"""Building in-memory configs for tests, without YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_server.config import ConfigFile, LoadedConfig


def entry(model_id: str, port: int, **fields: Any) -> dict[str, Any]:
    """A valid llamacpp entry for ``model_id`` on ``port``; ``fields`` override."""
    return {
        "id": model_id,
        "backend": "llamacpp",
        "port": port,
        "model_path": "/models/fake.gguf",
        "default_timeout": 5,
        "quantization": "Q4_K_M",
        "host": "127.0.0.1",
        **fields,
    }


def make_config(models: dict[str, dict[str, Any]], **router: Any) -> LoadedConfig:
    file = ConfigFile.model_validate({"models": models, "router": router})
    return LoadedConfig(path=Path("test-models.yaml"), base_dir=Path("."), file=file)
