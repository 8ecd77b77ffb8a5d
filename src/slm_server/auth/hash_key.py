"""``hash-key``: the SHA-256 of a key, to write in the config instead of the key."""

from __future__ import annotations

import getpass
import sys

from slm_server.auth.ring import key_digest

# Far beyond any key; a bound on what is read, should stdin be a large file by mistake.
_MAX_KEY_BYTES = 4096


def run_hash_key() -> int:
    """Read a key from stdin (one trailing newline dropped), print its SHA-256 in hex.

    At a terminal, the key is asked for without echo.
    """
    if sys.stdin.isatty():
        key = getpass.getpass("API key (not shown): ").encode()
    else:
        key = _one_line_dropped(sys.stdin.buffer.read(_MAX_KEY_BYTES + 1))
    if not key:
        print(
            'no key on stdin; e.g.: printf %s "$SLM_KEY_ALICE" | slm-server hash-key',
            file=sys.stderr,
        )
        return 1
    if len(key) > _MAX_KEY_BYTES:
        print(f"stdin holds more than {_MAX_KEY_BYTES} bytes: not a key", file=sys.stderr)
        return 1
    print(key_digest(key).hex())
    return 0


def _one_line_dropped(data: bytes) -> bytes:
    """``data`` without one trailing newline (what `echo` adds), CRLF or LF."""
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            return data[: -len(ending)]
    return data
