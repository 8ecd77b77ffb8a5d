"""The key the command line sends to a running instance, when the user gave none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from slm_server.config import ApiKey

API_KEY_ENV = "SLM_API_KEY"
_MAX_KEY_FILE_BYTES = 4096  # far beyond any key; a bound should the path name a large file


class KeyFileError(Exception):
    """The key file cannot be read, or holds no key; the message says which in plain words."""


def key_from_file(path: Path) -> str:
    """The key in ``path``: its first line, without the line's ending.

    A file, not a command-line argument: every local user can read a process's arguments
    (``ps``, /proc/<pid>/cmdline) while it runs.
    """
    try:
        with path.open("rb") as file:
            head = file.read(_MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    line = head.split(b"\n", 1)[0].removesuffix(b"\r")
    try:
        key = line.decode()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} does not start with a key (not UTF-8 text)") from None
    if not key.strip():
        raise KeyFileError(f"{path} holds no key on its first line")
    return key.strip()


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
