"""A request that cannot have a slot at once: it waits for its turn from the scheduler (if
its backend is not open), then for a free slot, and goes where its model is served then."""

from __future__ import annotations

import math
from collections.abc import Callable

from slm_server.router.admission import QUEUE_FULL_RETRY_AFTER_S
from slm_server.router.errors import (
    BackendUnavailable,
    InsufficientMemory,
    ModelNotFound,
    QueueFull,
    RouterError,
    ShuttingDown,
    Unreachable,
)
from slm_server.router.lifetime import QUEUED, ROOM, RequestLifetime
from slm_server.router.proxy import UNAVAILABLE_RETRY_AFTER_S
from slm_server.router.routing import Backend, RoutingTable
from slm_server.scheduler.decisions import RefuseReason
from slm_server.scheduler.owner import Scheduler
from slm_server.scheduler.waiters import Refused
from slm_server.supervisor import BackendFailed


async def hold_slot(
    scheduler: Scheduler | None,
    backend: Backend,
    lifetime: RequestLifetime,
    table: Callable[[], RoutingTable],
    model: str,
    path: str,
) -> Backend:
    """Wait for a slot of the backend serving ``model``; return that backend, holding one.

    ``backend`` is where the request was routed on arrival. A config reload may replace it
    meanwhile (its old process stops, a new one takes its port or another), or move the
    model to another role: the request then goes on to the backend ``table()`` names now,
    within the same deadline, instead of reaching a port where nothing listens any more.
    """
    while True:
        try:
            await _slot_of(scheduler, backend, lifetime)
        except Refused as refused:
            now = table()
            if refused.reason is RefuseReason.REMOVED and model in now.model_ids:
                moved = now.serving(model, path, backend.role)  # another role serves it now
                if moved is not backend:
                    backend = moved_to(moved, lifetime)
                    continue
            raise refusal_error(backend.label, refused) from None
        now = table()
        if now.backends.get(backend.role) is backend:
            return backend
        backend.gate.release()
        if backend.watched and scheduler is not None:  # as the end of a request does
            scheduler.wake()
        backend = moved_to(now.serving(model, path, backend.role), lifetime)


def moved_to(backend: Backend, lifetime: RequestLifetime) -> Backend:
    """``backend``, where a reload moved the request: checked as on arrival, and the one
    its deadline and its log lines name from now on."""
    if backend.unusable is not None:
        raise cannot_be_used(backend)
    lifetime.for_whom = backend
    return backend


def cannot_be_used(backend: Backend) -> BackendUnavailable:
    """A backend its config leaves unusable (an openai entry whose key is not set, say)."""
    return BackendUnavailable(f"{backend.label} cannot be used: {backend.unusable}")


async def _slot_of(
    scheduler: Scheduler | None, backend: Backend, lifetime: RequestLifetime
) -> None:
    """Return holding one of ``backend``'s slots; Refused if the scheduler turns it away."""
    gate = backend.gate
    if backend.open:
        if not gate.try_acquire():
            gate.check_room()
            await lifetime.wait_for(gate.acquire(), QUEUED)
        return
    assert scheduler is not None, "only the scheduler closes a backend"
    await take_turn(scheduler, backend, lifetime)


async def take_turn(scheduler: Scheduler, backend: Backend, lifetime: RequestLifetime) -> None:
    """Return holding one of ``backend``'s slots, once the scheduler lets it run.

    The request stays among the scheduler's waiters until it holds its slot or waits in
    the backend's queue, so that its backend never looks idle (and stoppable) meanwhile.
    """
    waiter = scheduler.enqueue(backend.role)
    backend.awaiting_turn += 1
    try:
        try:
            await lifetime.wait_for(waiter.granted, ROOM)
        finally:
            backend.awaiting_turn -= 1  # into the gate now, with no wait in between
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
    if refused.reason is RefuseReason.REMOVED:  # as for any unknown model: retrying won't help
        return ModelNotFound(message, param="model")
    retry_after = UNAVAILABLE_RETRY_AFTER_S
    if refused.retry_after_s is not None:
        retry_after = max(1, math.ceil(refused.retry_after_s))
    return BackendUnavailable(message, retry_after=retry_after)


def start_failed(label: str, exc: BackendFailed) -> Unreachable:
    """A backend that could not be started: 503, retry when its cooldown ends (or another
    replica of its model takes the request)."""
    retry_after = UNAVAILABLE_RETRY_AFTER_S
    if exc.retry_in_s is not None:  # failed: the first request after its cooldown retries
        retry_after = max(1, math.ceil(exc.retry_in_s))
    return Unreachable(f"{label} could not be started: {exc}", retry_after=retry_after)
