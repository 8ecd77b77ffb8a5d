"""``router.response_store_url``: where a shared Responses store lives, read without Redis.

The URL may hold a password (``redis://:secret@host``), so nothing here quotes it back:
messages name the faulty part, and ``shown`` leaves the user and password out.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss")
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class StoreUrl:
    scheme: str
    host: str
    port: int
    db: int
    has_password: bool

    @property
    def shown(self) -> str:
        """The URL as logs and messages may show it: without a user or password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.db}"


def parse_store_url(url: str) -> StoreUrl:
    """``url``'s parts; ValueError, in plain words that never quote it, when it is not
    ``redis://[user[:password]@]host[:port][/db]`` (or ``rediss://``, with TLS)."""
    form = "redis://[user[:password]@]host[:port][/db] or rediss://... (TLS)"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a URL of the form {form}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"must start with redis:// or rediss://, as in {form}")
    if not parts.hostname:
        raise ValueError(f"names no host; the form is {form}")
    if parts.query or parts.fragment:
        raise ValueError(f"takes no options after '?' or '#'; the form is {form}")
    if port == 0:
        raise ValueError("has port 0, which no server listens on")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"must end with a database number (/0, /1, ...) or nothing: {form}")
    return StoreUrl(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        db=int(path) if path else 0,
        has_password=bool(parts.password),
    )
