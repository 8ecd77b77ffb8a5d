import asyncio

import pytest

from slm_server.router.admission import AdmissionGate
from slm_server.router.errors import QueueFull


async def test_admits_up_to_limit_then_queues() -> None:
    gate = AdmissionGate(limit=2, max_waiting=5)
    await gate.acquire()
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert (gate.active, gate.waiting) == (2, 1)
    gate.release()
    await waiter
    assert (gate.active, gate.waiting) == (2, 0)


async def test_waiters_are_served_in_arrival_order() -> None:
    gate = AdmissionGate(limit=1, max_waiting=10)
    order: list[int] = []

    async def worker(n: int) -> None:
        async with gate.slot():
            order.append(n)
            await asyncio.sleep(0)

    await gate.acquire()
    tasks = []
    for n in range(5):
        tasks.append(asyncio.ensure_future(worker(n)))
        await asyncio.sleep(0)  # make arrival order explicit
    gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (gate.active, gate.waiting) == (0, 0)


async def test_newcomer_cannot_overtake_a_waiter() -> None:
    gate = AdmissionGate(limit=1, max_waiting=10)
    await gate.acquire()
    first = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # the slot now belongs to `first`, even before it runs
    second = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert first.done()
    assert not second.done()
    gate.release()
    await second


async def test_full_queue_raises_queue_full_with_retry_after() -> None:
    gate = AdmissionGate(limit=1, max_waiting=1)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as raised:
        await gate.acquire()
    assert raised.value.status == 429
    assert raised.value.retry_after is not None
    waiter.cancel()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    gate = AdmissionGate(limit=1, max_waiting=1)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.release()
    assert gate.active == 0


async def test_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    gate = AdmissionGate(limit=1, max_waiting=5)
    await gate.acquire()
    doomed = asyncio.ensure_future(gate.acquire())
    patient = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # granted to `doomed` ...
    doomed.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(patient, 1)
    assert gate.active == 1


async def test_a_waiter_cancelled_just_before_a_release_leaves_cleanly() -> None:
    """The release drops the cancelled waiter before its task runs: no error, no lost slot."""
    gate = AdmissionGate(limit=1, max_waiting=10)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.active, gate.waiting) == (0, 0)
    await asyncio.wait_for(gate.acquire(), 1)  # the slot is free for the next one
