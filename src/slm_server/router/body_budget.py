"""How many bytes of request bodies the router holds at once, across all requests.

Each body must be held whole: its ``model`` field, which picks the backend, may come
last (the OpenAI SDK writes ``input`` and ``messages`` before it). Without a shared
bound, a few large uploads at once take the router's memory with them; with one, the
upload that would cross it is refused at once (503, try again shortly) and those
already accepted finish.

Small bodies (a chat turn, an embeddings batch) may also use a reserve above the
limit that large uploads cannot take: a few big uploads filling the budget would
otherwise refuse every ordinary request meanwhile. The reserve is bounded too, so
memory stays bounded by ``limit + reserve``.
"""

from __future__ import annotations

from slm_server.router.errors import TooManyBodies

# A refused upload can usually go through once the ones in flight have been forwarded.
RETRY_AFTER_S = 1

# A body no larger than this is "small": almost every chat or embeddings request is.
SMALL_BODY_BYTES = 1024 * 1024
# Room kept for small bodies above the limit: sixteen of the largest small ones, or
# hundreds of ordinary chat turns, at once.
SMALL_BODY_RESERVE_BYTES = 16 * SMALL_BODY_BYTES


class BodyBudget:
    """Bytes taken by bodies being read or served; never more than ``limit``, plus
    ``reserve`` for small bodies."""

    __slots__ = ("in_use", "limit", "reserve")

    def __init__(self, limit: int, reserve: int = SMALL_BODY_RESERVE_BYTES) -> None:
        self.limit = limit
        self.reserve = reserve
        self.in_use = 0

    def take(self, size: int, body_size: int) -> None:
        """Count ``size`` more bytes of a body now ``body_size`` long; TooManyBodies
        (counting nothing) if they do not fit."""
        room = self.limit + self.reserve if body_size <= SMALL_BODY_BYTES else self.limit
        if self.in_use + size > room:
            raise TooManyBodies(
                f"the router holds {self.in_use} bytes of request bodies already; this one "
                f"would cross router.max_inflight_body_mb ({self.limit} bytes); retry shortly",
                retry_after=RETRY_AFTER_S,
            )
        self.in_use += size

    def give_back(self, size: int) -> None:
        self.in_use -= size
