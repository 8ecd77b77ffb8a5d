"""What check-config (and start-up) says about the shared Responses store's settings.

Error: ``response_store_password_env`` names an unset variable (``serve`` and ``router``
refuse to start on it). Warnings: a password written in the URL, in the file itself; a
``response_store_ttl_s`` without a ``response_store_url`` it could apply to.
"""

from __future__ import annotations

from collections.abc import Mapping

from slm_server.config import LoadedConfig, Problem
from slm_server.config.problems import Severity
from slm_server.config.store_url import parse_store_url
from slm_server.stores import StoreSettingError, store_password


def store_problems(config: LoadedConfig, environ: Mapping[str, str]) -> list[Problem]:
    """The problems of ``config``'s Responses store settings, variables read from ``environ``."""
    settings = config.file.router
    url = settings.response_store_url
    if url is None:
        if "response_store_ttl_s" in settings.model_fields_set:
            message = "applies with response_store_url only; responses are kept in memory"
            return [_problem(config, "warning", "response_store_ttl_s", message)]
        return []
    problems: list[Problem] = []
    if parse_store_url(url).has_password:
        message = (
            "the Redis password is written in the file itself, for anyone who can read the "
            "file to use; prefer response_store_password_env (an environment variable)"
        )
        problems.append(_problem(config, "warning", "response_store_url", message))
    try:
        store_password(settings, environ)
    except StoreSettingError as exc:
        problems.append(_problem(config, "error", "response_store_password_env", str(exc)))
    return problems


def _problem(config: LoadedConfig, severity: Severity, name: str, message: str) -> Problem:
    return Problem(severity, config.path, None, None, f"router.{name}", message)
