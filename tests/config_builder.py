"""Building in-memory configs for tests, without YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_server.config import ConfigError, ConfigFile, LoadedConfig, load_config


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


def load_models(tmp_path: Path, **entries: dict[str, Any]) -> LoadedConfig:
    """``entries`` (role -> entry) written as ``tmp_path/models.yaml`` and loaded from it,
    as a user's file is: every check of the loader runs."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return load_config(path)


def load_errors(tmp_path: Path, **entries: dict[str, Any]) -> list[str]:
    """The problems that keep ``entries`` from loading, as the user reads them."""
    with pytest.raises(ConfigError) as caught:
        load_models(tmp_path, **entries)
    return [str(problem) for problem in caught.value.problems]
