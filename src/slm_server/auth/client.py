"""The key the command line sends to a running instance, when the user gave none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slm_server.config import ApiKey

API_KEY_ENV = "SLM_API_KEY"


def key_at_hand(keys: Sequence[ApiKey], environ: Mapping[str, str]) -> str | None:
    """A configured key this machine's user holds: its ``key_env`` variable set here, or
    its plain ``key``; admin keys first (``load`` and ``unload`` need one). None if no
    such key (a ``key_sha256`` cannot be turned back into the key)."""
    for key in sorted(keys, key=lambda key: not key.admin):  # stable: file order otherwise
        if key.key_env is not None:
            secret = environ.get(key.key_env)
        else:
            secret = None if key.key is None else key.key.get_secret_value()
        if secret:
            return secret
    return None
