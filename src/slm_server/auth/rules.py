"""What check-config (and start-up) says about ``router.api_keys``.

Errors: a key that cannot be read (its variable unset) or repeats another; ``serve`` and
``router`` refuse to start on them. Warnings: a key written in the file itself, and a
key's ``models`` naming an id no enabled entry serves (a typo would leave the key unable
to use the model meant).
"""

from __future__ import annotations

from collections.abc import Mapping

from slm_server.auth.ring import stored_digests
from slm_server.config import LoadedConfig, Problem


def key_problems(config: LoadedConfig, environ: Mapping[str, str]) -> list[Problem]:
    """The problems of ``config``'s API keys, their variables read from ``environ``."""
    keys = config.file.router.api_keys
    _, faults = stored_digests(keys, environ)
    problems = [
        Problem("error", config.path, None, None, _field(f.index, f.field), f.message)
        for f in faults
    ]
    served = {entry.id for entry in config.models.values() if entry.enabled}
    for index, key in enumerate(keys):
        if key.key is not None:
            message = (
                f"key '{key.name}' is written in the file itself, for anyone who can read "
                "the file to use; prefer key_env (an environment variable) or key_sha256 "
                "(what `slm-server hash-key` prints)"
            )
            problems.append(
                Problem("warning", config.path, None, None, _field(index, "key"), message)
            )
        unknown = [model for model in key.models or () if model not in served]
        if unknown:
            listed = ", ".join(f"'{model}'" for model in unknown)
            message = (
                f"key '{key.name}' lists {listed}, which no enabled entry serves (model ids "
                f"served: {', '.join(sorted(served)) or 'none'})"
            )
            problems.append(
                Problem("warning", config.path, None, None, _field(index, "models"), message)
            )
    return problems


def _field(index: int, name: str) -> str:
    return f"router.api_keys.{index}.{name}"
