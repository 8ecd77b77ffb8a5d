"""A request whose backend is not open: it waits for its turn from the scheduler."""

from __future__ import annotations

import math

from slm_server.router.admission import QUEUE_FULL_RETRY_AFTER_S
from slm_server.router.errors import (
    BackendUnavailable,
    InsufficientMemory,
    QueueFull,
    RouterError,
    ShuttingDown,
)
from slm_server.router.lifetime import QUEUED, ROOM, RequestLifetime
from slm_server.router.proxy import UNAVAILABLE_RETRY_AFTER_S
from slm_server.router.routing import Backend
from slm_server.scheduler.decisions import RefuseReason
from slm_server.scheduler.owner import Refused, Scheduler
from slm_server.supervisor import BackendFailed


async def take_turn(scheduler: Scheduler, backend: Backend, lifetime: RequestLifetime) -> None:
    """Return holding one of ``backend``'s slots, once the scheduler lets it run.

    The request stays among the scheduler's waiters until it holds its slot or waits in
    the backend's queue, so that its backend never looks idle (and stoppable) meanwhile.
    """
    try:
        waiter = scheduler.enqueue(backend.role)
    except Refused as refused:
        raise refusal_error(backend.label, refused) from None
    try:
        try:
            await lifetime.wait_for(waiter.granted, ROOM)
        except Refused as refused:
            raise refusal_error(backend.label, refused) from None
        gate = backend.gate
        if not gate.try_acquire():
            gate.check_room()
            await lifetime.wait_for(gate.acquire(), QUEUED)
    finally:
        scheduler.leave(waiter)


def refusal_error(label: str, refused: Refused) -> RouterError:
    message = f"{label}: {refused}"
    if refused.reason is RefuseReason.CANNOT_FIT:
        return InsufficientMemory(message)
    if refused.reason is RefuseReason.QUEUE_FULL:
        return QueueFull(message, retry_after=QUEUE_FULL_RETRY_AFTER_S)
    if refused.reason is RefuseReason.SHUTTING_DOWN:
        return ShuttingDown(message)
    retry_after = UNAVAILABLE_RETRY_AFTER_S
    if refused.retry_after_s is not None:
        retry_after = max(1, math.ceil(refused.retry_after_s))
    return BackendUnavailable(message, retry_after=retry_after)


def start_failed(label: str, exc: BackendFailed) -> BackendUnavailable:
    """A backend that could not be started: 503, retry when its cooldown ends."""
    retry_after = UNAVAILABLE_RETRY_AFTER_S
    if exc.retry_in_s is not None:  # failed: the first request after its cooldown retries
        retry_after = max(1, math.ceil(exc.retry_in_s))
    return BackendUnavailable(f"{label} could not be started: {exc}", retry_after=retry_after)
