"""The API keys the router accepts: each kept only as its SHA-256 digest.

A presented key is hashed and compared with every stored digest in constant time, with no
early exit, so neither which key matched nor how much of one did shows in the time taken.
The keys themselves are read once, at start-up, and never kept.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slm_server.config import ApiKey


@dataclass(frozen=True, slots=True)
class Grant:
    """What one key may do: use ``models`` (None: every model), and the admin endpoints."""

    name: str
    models: frozenset[str] | None
    admin: bool

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class KeyFault:
    """Why the key at ``index`` of ``router.api_keys`` cannot be used; ``field`` is its field."""

    index: int
    field: str
    message: str


class KeyRingError(Exception):
    """The configured keys cannot be used as they are; ``faults`` says each reason."""

    def __init__(self, faults: Sequence[KeyFault]) -> None:
        super().__init__("; ".join(fault.message for fault in faults))
        self.faults = list(faults)


def key_digest(key: bytes) -> bytes:
    """The SHA-256 digest stored for ``key`` (a presented key as its header's bytes)."""
    return hashlib.sha256(key).digest()


def stored_digests(
    keys: Sequence[ApiKey], environ: Mapping[str, str]
) -> tuple[list[bytes | None], list[KeyFault]]:
    """Each key's digest, None for one that cannot be read; and the faults found.

    A fault: a ``key_env`` variable not set (or empty: an empty key would let in anyone
    who sends an empty one), or a key the same as an earlier one (which would then grant
    whatever either of them grants, by chance).
    """
    digests: list[bytes | None] = []
    faults: list[KeyFault] = []
    first_with: dict[bytes, ApiKey] = {}
    for index, key in enumerate(keys):
        digest, field = _digest(key, environ)
        digests.append(digest)
        if digest is None:
            message = (
                f"key '{key.name}': the environment variable {key.key_env} is not set "
                "(or is empty); set it to the key before starting"
            )
            faults.append(KeyFault(index, field, message))
            continue
        earlier = first_with.setdefault(digest, key)
        if earlier is not key:
            message = f"key '{key.name}' is the same key as '{earlier.name}': give each its own key"
            faults.append(KeyFault(index, field, message))
    return digests, faults


def _digest(key: ApiKey, environ: Mapping[str, str]) -> tuple[bytes | None, str]:
    """The key's digest (None when its variable is unset or empty), and the field it is from."""
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256), "key_sha256"
    if key.key is not None:
        return key_digest(key.key.encode()), "key"
    assert key.key_env is not None  # the schema asks for exactly one of the three
    value = environ.get(key.key_env)
    return (key_digest(value.encode()) if value else None), "key_env"


class KeyRing:
    """The accepted keys' digests, each with its grant."""

    def __init__(self, entries: Sequence[tuple[bytes, Grant]]) -> None:
        self._entries = tuple(entries)

    @property
    def names(self) -> list[str]:
        return [grant.name for _, grant in self._entries]

    def grant(self, presented: bytes) -> Grant | None:
        """The grant of the key ``presented``, None when no stored key matches it."""
        digest = key_digest(presented)
        found: Grant | None = None
        for stored, grant in self._entries:  # every one, whatever matched before
            if hmac.compare_digest(stored, digest):
                found = grant
        return found


def key_ring(keys: Sequence[ApiKey], environ: Mapping[str, str]) -> KeyRing | None:
    """The ring of ``keys`` (``router.api_keys``), None when there are none: no key is
    asked for then. KeyRingError when a key cannot be read or repeats another."""
    if not keys:
        return None
    digests, faults = stored_digests(keys, environ)
    if faults:
        raise KeyRingError(faults)
    return KeyRing(
        [
            (digest, _grant(key))
            for digest, key in zip(digests, keys, strict=True)
            if digest is not None
        ]
    )


def _grant(key: ApiKey) -> Grant:
    models = None if key.models is None else frozenset(key.models)
    return Grant(key.name, models, key.admin)
