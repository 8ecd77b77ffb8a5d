"""How many bytes of request bodies the router holds at once, across all requests.

Each body must be held whole: its ``model`` field, which picks the backend, may come
last (the OpenAI SDK writes ``input`` and ``messages`` before it). Without a shared
bound, a few large uploads at once take the router's memory with them; with one, the
upload that would cross it is refused at once (503, try again shortly) and those
already accepted finish.
"""

from __future__ import annotations

from slm_server.router.errors import TooManyBodies

# A refused upload can usually go through once the ones in flight have been forwarded.
RETRY_AFTER_S = 1


class BodyBudget:
    """Bytes taken by bodies being read or served; never more than ``limit``."""

    __slots__ = ("in_use", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes; TooManyBodies (counting nothing) if they do not fit."""
        if self.in_use + size > self.limit:
            raise TooManyBodies(
                f"the router holds {self.in_use} bytes of request bodies already; this one "
                f"would cross router.max_inflight_body_mb ({self.limit} bytes); retry shortly",
                retry_after=RETRY_AFTER_S,
            )
        self.in_use += size

    def give_back(self, size: int) -> None:
        self.in_use -= size
