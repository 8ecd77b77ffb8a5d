"""``backend: openai``: an OpenAI-compatible server slm_server does not start.

vLLM, SGLang, a llama-server on another machine, a hosted API: the router only sends
requests there. What it needs to do so is worked out once, when the config is read:
where the server is (``base_url``), how its certificate is checked, the key it asks for,
and which endpoints it answers itself. Like a ``command`` server, it is sent the
Responses and Anthropic Messages endpoints only when its entry lists them in
``native_endpoints``; the router converts the others to chat completions.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slm_server.backends.spec import BackendUnsupported
from slm_server.config import LoadedConfig, ModelEntry, Problem
from slm_server.config.base_url import BaseUrl
from slm_server.config.paths import resolve_local
from slm_server.config.problems import Severity
from slm_server.config.replicas import as_written

# Always sent as they are: the target of every conversion, and never converted itself.
_ALWAYS_NATIVE = frozenset({"/v1/chat/completions"})


# What a client is told of a key that cannot be sent: the variable's name stays in the
# router's log, for it may be the key itself, pasted into api_key_env by mistake.
KEY_NOT_CONFIGURED = "its upstream key is not configured (see the router log)"


class KeyNotUsable(BackendUnsupported):
    """The key api_key_env names is unset or cannot go in a header; the message says
    which, for the router's log and check-config only."""


@dataclass(frozen=True, eq=False)
class Remote:
    """How the router reaches one openai entry's server."""

    url: BaseUrl
    tls: ssl.SSLContext | None  # None: plain HTTP
    # Sent with every request and probe, in place of the client's own credentials.
    headers: tuple[tuple[bytes, bytes], ...]
    native_endpoints: frozenset[str]
    health_path: str


def remote(entry: ModelEntry, base_dir: Path, environ: Mapping[str, str]) -> Remote:
    """How to reach ``entry``'s server; BackendUnsupported, in plain words, when it cannot
    be (the key's variable unset, a CA file that cannot be read)."""
    url = entry.remote_url
    if url is None:
        raise BackendUnsupported(f"{entry.id} is not an openai entry")
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if entry.api_key_env is not None:
        key = environ.get(entry.api_key_env, "").strip()
        problem = _key_problem(entry.api_key_env, key)
        if problem is not None:
            raise KeyNotUsable(problem)
        headers = ((b"authorization", b"Bearer " + key.encode("ascii")),)
    return Remote(
        url,
        tls_context(entry.tls_verify, base_dir) if url.tls else None,
        headers,
        _ALWAYS_NATIVE | frozenset(entry.native_endpoints),
        entry.health_path,
    )


def tls_context(verify: bool | str, base_dir: Path) -> ssl.SSLContext:
    """Checks certificates against the system's CAs (True), a CA file (its path), or not
    at all (False). One context per value: the connection pool keys its idle connections
    by context, so a reload must not make a new one for the same servers."""
    if verify is False or verify is True:
        return _context(verify, None)
    return _context(None, resolve_local(verify, base_dir))


@functools.cache
def _context(verify: bool | None, path: Path | None) -> ssl.SSLContext:
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise BackendUnsupported(f"tls_verify: cannot read the CA file {path}: {exc}") from None


# A restart is what sets a variable anew: a reload reads the config file, not the
# environment the server was started with.
_RESTART = "and restart the server (a config reload does not read the environment again)"


_KEY_AS_NAME = (
    "its value looks like a key itself; give the name of an environment variable that "
    "holds the key instead"
)


def _key_problem(variable: str, key: str) -> str | None:
    """Why the value of ``variable`` cannot be sent as a key (None: it can)."""
    if not key and looks_like_a_key(variable):
        return f"api_key_env is not set: {_KEY_AS_NAME}, set it {_RESTART}"
    if not key:
        return (
            f"the environment variable {variable} (api_key_env) is not set or is empty: "
            f"set it to the key the server asks for {_RESTART}"
        )
    # A header value carries visible ASCII only: anything else would fail to encode, or
    # (a line break) add headers of its own to every request.
    if not all("!" <= char <= "~" for char in key):
        return (
            f"the environment variable {variable} (api_key_env) holds spaces, line breaks "
            f"or non-ASCII characters, which no key has: set it to the key alone {_RESTART}"
        )
    return None


def looks_like_a_key(variable: str) -> bool:
    """Whether ``variable`` reads as a key (``gsk_8fJ2kQx0...``) more than as a variable
    name: long, and mixing upper and lower case letters with digits."""
    return (
        len(variable) >= 24
        and any(char.isupper() for char in variable)
        and any(char.islower() for char in variable)
        and any(char.isdigit() for char in variable)
    )


def setup_problems(config: LoadedConfig, environ: Mapping[str, str]) -> list[Problem]:
    """What keeps an enabled openai entry from being reached: its key's variable unset, a
    CA file that cannot be read (errors), tls_verify on a plain-HTTP URL (a warning)."""
    problems: list[Problem] = []
    for role, entry in as_written(config.models):
        url = entry.remote_url
        if not entry.enabled or url is None:
            continue
        found: list[tuple[Severity, str, str]] = []
        if entry.api_key_env is not None:
            key = environ.get(entry.api_key_env, "").strip()
            problem = _key_problem(entry.api_key_env, key)
            if problem is not None:
                found.append(("error", "api_key_env", problem))
            elif looks_like_a_key(entry.api_key_env):
                found.append(("warning", "api_key_env", _KEY_AS_NAME))
        if entry.tls_verify is not True and not url.tls:
            found.append(("warning", "tls_verify", "applies to https URLs only; ignored for http"))
        elif url.tls and isinstance(entry.tls_verify, str):
            try:
                tls_context(entry.tls_verify, config.base_dir)
            except BackendUnsupported as exc:
                found.append(("error", "tls_verify", str(exc).removeprefix("tls_verify: ")))
        problems += [Problem(sev, config.path, role, entry.id, f, text) for sev, f, text in found]
    return problems
