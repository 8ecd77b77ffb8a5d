"""The environment variables that hold API keys: kept from every backend's environment."""

from __future__ import annotations

from collections.abc import Sequence

from slm_server.auth.client import API_KEY_ENV
from slm_server.config import ApiKey


def key_variables(keys: Sequence[ApiKey]) -> frozenset[str]:
    """Each ``key_env`` of ``keys`` and ``SLM_API_KEY``: a backend has no use for a client's
    key, and one that logs or exposes its environment would give the keys away."""
    return frozenset({API_KEY_ENV, *(key.key_env for key in keys if key.key_env is not None)})
