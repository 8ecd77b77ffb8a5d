"""The API keys the router accepts: each kept only as its SHA-256 digest.

A presented key is hashed and its digest looked up among the stored ones. The keys
themselves are read from the environment once, at start-up, and never kept here (a plain
``key`` in the file stays in the loaded config, as a SecretStr that does not print).
"""

from __future__ import annotations

import hashlib
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
    who sends an empty one), one whose key starts or ends with whitespace (a presented key
    is stripped of it, so it could never match), or a key the same as an earlier one (which
    would then grant whatever either of them grants, by chance). No message quotes a key,
    nor the variable's name (a key pasted there by mistake).
    """
    digests: list[bytes | None] = []
    faults: list[KeyFault] = []
    first_with: dict[bytes, ApiKey] = {}
    for index, key in enumerate(keys):
        digest, field = _digest(key, environ)
        digests.append(digest)
        if digest is None:
            faults.append(KeyFault(index, field, f"key '{key.name}': {_unusable(key, environ)}"))
            continue
        earlier = first_with.setdefault(digest, key)
        if earlier is not key:
            message = f"key '{key.name}' is the same key as '{earlier.name}': give each its own key"
            faults.append(KeyFault(index, field, message))
    return digests, faults


def _digest(key: ApiKey, environ: Mapping[str, str]) -> tuple[bytes | None, str]:
    """The key's digest (None when its variable is unusable: see _unusable), and the field
    it is from."""
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256), "key_sha256"
    if key.key is not None:
        return key_digest(key.key.get_secret_value().encode()), "key"
    assert key.key_env is not None  # the schema asks for exactly one of the three
    value = environ.get(key.key_env)
    if value and value == value.strip():
        return key_digest(value.encode()), "key_env"
    return None, "key_env"


def _unusable(key: ApiKey, environ: Mapping[str, str]) -> str:
    """Why the key in ``key``'s ``key_env`` variable cannot be used."""
    if environ.get(key.key_env or ""):
        # Presented keys are stripped of surrounding whitespace: this one could never match.
        return (
            "the key in the environment variable named by key_env starts or ends with "
            "whitespace (a space, a tab, a newline), which no request can send; remove it"
        )
    return (
        "the environment variable named by key_env is not set (or is empty); set it to "
        "the key before starting"
    )


class KeyRing:
    """The accepted keys' digests, each with its grant; and the keys already presented
    that matched one, so that a known key costs a dict lookup, not a SHA-256 (a third of
    the cost of checking a key).

    Only a key that matched is remembered, so the memo holds one entry per stored key at
    most (two different keys with one digest would take a SHA-256 collision), however
    many unknown keys clients send. It does keep a key itself in this process's memory,
    where a request's headers held it for a moment anyway.
    """

    __slots__ = ("_grants", "_known")

    def __init__(self, entries: Sequence[tuple[bytes, Grant]]) -> None:
        self._grants = dict(entries)  # no two alike: stored_digests refuses repeated keys
        self._known: dict[bytes, Grant] = {}  # a presented key, as sent -> its grant

    @property
    def names(self) -> list[str]:
        return [grant.name for grant in self._grants.values()]

    def grant(self, presented: bytes) -> Grant | None:
        """The grant of the key ``presented``, None when no stored key matches it (an empty
        one never does)."""
        known = self._known.get(presented)
        if known is not None:
            return known
        if not presented:
            return None
        # A dict lookup, not a constant-time compare: its time can depend only on the
        # presented key's digest, whose bytes a client cannot choose (that would take a
        # SHA-256 preimage), so timing it tells nothing about any stored digest or key. And
        # it costs the same with 1 key or 1000, where comparing with each grows.
        # The memo lookup above compares the presented bytes with a remembered key only
        # when their full 64-bit hashes are equal, and the hash is keyed by a secret made
        # at the process's start: a client cannot aim a guess at a remembered key. Which
        # of the memo's few slots are taken (a handful of bits of the keys' hashes) is all
        # its timing could tell, nothing a key could be found from.
        grant = self._grants.get(hashlib.sha256(presented).digest())  # key_digest, inline
        if grant is not None and len(self._known) < len(self._grants):
            self._known[presented] = grant
        return grant


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
