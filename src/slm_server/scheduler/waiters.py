"""A request (or a load call) waiting for its model's turn, and the scheduler's refusals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from slm_server.scheduler.decisions import RefuseReason


class Refused(Exception):
    """A waiter the scheduler turned away; ``reason`` says why, for the error's code."""

    def __init__(
        self, reason: RefuseReason, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Waiter:
    """A request for ``role``'s turn, ``seq`` its place in line; ``granted`` is done when
    it may go to its backend, or holds the Refused saying why not."""

    role: str
    seq: int
    granted: asyncio.Future[None]
    forced: bool = False  # a load call: a failed backend is tried at once


def wants(waiter: Waiter) -> bool:
    """Still a demand: waiting for its turn, or let in but not yet holding a slot (until
    it does, its backend would look idle, and could be stopped under it)."""
    if not waiter.granted.done():
        return True
    return not waiter.granted.cancelled() and waiter.granted.exception() is None


def shutting_down() -> Refused:
    return Refused(RefuseReason.SHUTTING_DOWN, "the server is stopping")


def removed(role: str) -> Refused:
    return Refused(RefuseReason.REMOVED, f"{role} was removed from the config by a reload")
