"""CORS: which web pages may call the router from a browser (``router.cors_origins``).

An allowed origin gets ``Access-Control-Allow-Origin`` (its own origin, echoed) on every
answer, errors included, so a page can read them; its preflight ``OPTIONS`` is answered
204. Any other origin gets nothing: to it the router looks as it does without CORS (a
preflight gets 405), and the browser keeps the page from calling.
"""

from __future__ import annotations

from collections.abc import Iterable

from slm_server.router.asgi import Headers

ANY_ORIGIN = "*"

# What a page may send. Listed, not "*" alone: a wildcard never covers Authorization.
# "*" covers the rest, such as the x-stainless-* headers of OpenAI's and Anthropic's SDKs.
_ALLOW_HEADERS = b"authorization, x-api-key, content-type, anthropic-version, x-request-id, *"
# What a page may read of an answer besides the usual few (content-type and such).
_EXPOSE_HEADERS = (
    b"x-request-id, x-slm-overhead-ms, x-slm-queue-ms, x-slm-converted-from, retry-after"
)
_MAX_AGE_S = b"600"  # how long a browser may reuse a preflight's answer


class Cors:
    """The configured origins, and the headers an allowed one gets."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origins)
        self._any = ANY_ORIGIN in self._origins

    def allows(self, origin: bytes | None) -> bool:
        if origin is None:
            return False
        return self._any or origin.decode("latin-1") in self._origins

    @staticmethod
    def answer_headers(origin: bytes) -> Headers:
        """For every answer to a request from an allowed ``origin``."""
        return [
            (b"access-control-allow-origin", origin),
            # The answer depends on the Origin: a cache must not give one page's to another.
            (b"vary", b"origin"),
            (b"access-control-expose-headers", _EXPOSE_HEADERS),
        ]

    @staticmethod
    def preflight_headers(methods: str) -> Headers:
        """A preflight's answer besides ``answer_headers``: ``methods`` the path takes."""
        return [
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-allow-headers", _ALLOW_HEADERS),
            (b"access-control-max-age", _MAX_AGE_S),
        ]


def is_preflight(method: str, headers: Headers) -> bool:
    """An OPTIONS request a browser sends before a cross-origin call."""
    if method != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in headers)
