"""The bound on request body bytes held at once, and reading a body against it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from pydantic import ValidationError

from slm_server.config import RouterSettings
from slm_server.router.asgi import ClientDisconnected, Message, Receive, read_body
from slm_server.router.body_budget import SMALL_BODY_BYTES, BodyBudget
from slm_server.router.body_deadlines import BodyDeadlines
from slm_server.router.errors import BodyStalled, BodyTooLarge, TooManyBodies

MIB = 1024 * 1024


def test_what_does_not_fit_is_refused_and_counts_nothing() -> None:
    budget = BodyBudget(100 * MIB, reserve=0)
    budget.take(60 * MIB, 60 * MIB)
    with pytest.raises(TooManyBodies) as refused:
        budget.take(41 * MIB, 41 * MIB)
    assert refused.value.status == 503
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    assert budget.in_use == 60 * MIB
    budget.take(40 * MIB, 40 * MIB)
    budget.give_back(100 * MIB)
    assert budget.in_use == 0


def test_small_bodies_have_a_reserve_that_large_uploads_cannot_take() -> None:
    budget = BodyBudget(8 * MIB, reserve=2 * MIB)
    budget.take(8 * MIB, 8 * MIB)  # large uploads fill the budget
    with pytest.raises(TooManyBodies):
        budget.take(2 * MIB, 2 * MIB)
    budget.take(SMALL_BODY_BYTES, SMALL_BODY_BYTES)  # a chat request still goes through
    budget.take(1000, 1000)
    # A chunked body counted as small until it grows beyond: then held to the limit.
    with pytest.raises(TooManyBodies):
        budget.take(1, SMALL_BODY_BYTES + 1)
    budget.take(SMALL_BODY_BYTES - 1000, SMALL_BODY_BYTES)
    with pytest.raises(TooManyBodies):  # and the reserve is bounded too
        budget.take(1, 1)
    assert budget.in_use == 10 * MIB


def scope(content_length: int | None) -> dict[str, Any]:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {"type": "http", "headers": headers}


def receiving(messages: Iterable[Message]) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0)

    return receive


def part(body: bytes, *, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_declared_length_is_taken_before_a_byte_is_read() -> None:
    budget = BodyBudget(100, reserve=0)
    budget.take(50, 50)
    never: list[Message] = []  # the body is never asked for: refused on its headers
    with pytest.raises(TooManyBodies):
        await read_body(scope(60), receiving(never), 1000, budget, BodyDeadlines())
    assert budget.in_use == 50


async def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    budget = BodyBudget(100, reserve=0)
    parts = [part(b"x" * 40, more=True), part(b"x" * 40, more=True), part(b"x" * 40, more=False)]
    with pytest.raises(TooManyBodies):
        await read_body(scope(None), receiving(parts), 1000, budget, BodyDeadlines())
    assert budget.in_use == 0  # the 80 bytes read before the refusal were given back

    parts = [part(b"a" * 30, more=True), part(b"b" * 30, more=False)]
    body = await read_body(scope(None), receiving(parts), 1000, budget, BodyDeadlines())
    assert body == b"a" * 30 + b"b" * 30
    assert budget.in_use == 60  # the caller's, until it gives len(body) back


async def test_a_client_leaving_mid_upload_gives_its_bytes_back() -> None:
    budget = BodyBudget(100)
    for length in (None, 90):
        parts = [part(b"x" * 20, more=True), {"type": "http.disconnect"}]
        with pytest.raises(ClientDisconnected):
            await read_body(scope(length), receiving(parts), 1000, budget, BodyDeadlines())
        assert budget.in_use == 0


async def test_a_body_over_the_size_limit_gives_its_bytes_back() -> None:
    budget = BodyBudget(100)
    parts = [part(b"x" * 8, more=True), part(b"x" * 8, more=False)]
    with pytest.raises(BodyTooLarge):
        await read_body(scope(None), receiving(parts), 10, budget, BodyDeadlines())
    with pytest.raises(BodyTooLarge):
        await read_body(scope(16), receiving(parts), 10, budget, BodyDeadlines())
    assert budget.in_use == 0


async def test_a_large_declared_body_arrives_whole_and_in_order() -> None:
    budget = BodyBudget(1 << 22)
    pieces = [bytes([65 + index]) * 100_000 for index in range(5)]
    parts = [part(piece, more=index < 4) for index, piece in enumerate(pieces)]
    body = await read_body(scope(500_000), receiving(parts), 1 << 22, budget, BodyDeadlines())
    assert body == b"".join(pieces)
    assert budget.in_use == 500_000


def test_the_budget_defaults_to_two_of_the_largest_bodies_and_holds_at_least_one() -> None:
    assert RouterSettings().inflight_body_bytes == 128 * 1024 * 1024
    assert RouterSettings(max_body_mb=10).inflight_body_bytes == 20 * 1024 * 1024
    assert RouterSettings(max_inflight_body_mb=300).inflight_body_bytes == 300 * 1024 * 1024
    with pytest.raises(ValidationError, match="below max_body_mb"):
        RouterSettings(max_body_mb=64, max_inflight_body_mb=32)


def stalling_after(messages: Iterable[Message]) -> Receive:
    """``messages``, then nothing ever again (a client that stopped sending)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


@pytest.mark.parametrize(
    ("length", "parts"),
    [
        (None, [part(b"x" * 10, more=True)]),  # chunked: stalls after a first part
        (500_000, []),  # a large declared body that never starts
        (500_000, [part(b"x" * 10, more=True)]),
        (100, []),  # a small body that never starts
        (65536, []),
        (None, []),  # chunked, never starts
    ],
)
async def test_a_stalled_upload_is_ended_and_gives_its_bytes_back(
    length: int | None, parts: list[Message]
) -> None:
    budget = BodyBudget(1 << 20)
    with pytest.raises(BodyStalled) as stalled:
        async with asyncio.timeout(5):
            await read_body(
                scope(length), stalling_after(parts), 1 << 20, budget, BodyDeadlines(0.05)
            )
    assert stalled.value.status == 408
    assert budget.in_use == 0


def trickling(part_bytes: int, every_s: float, parts: int) -> Receive:
    """A client sending ``parts`` parts of ``part_bytes``, one every ``every_s``."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        await asyncio.sleep(every_s)  # the client's pace, not a wait for an event
        sent += 1
        return part(b"x" * part_bytes, more=sent < parts)

    return receive


@pytest.mark.parametrize("length", [None, 1_000_000])
async def test_a_trickle_below_the_minimum_rate_is_ended_after_the_grace(
    length: int | None,
) -> None:
    # Each part comes well within the idle timeout, so only the whole-body rate ends it.
    budget = BodyBudget(1 << 21)
    with pytest.raises(BodyStalled) as stalled:
        async with asyncio.timeout(5):
            await read_body(
                scope(length), trickling(1, 0.02, 10_000), 1 << 21, budget, BodyDeadlines(0.2, 1000)
            )
    assert stalled.value.status == 408
    assert budget.in_use == 0


async def test_an_upload_at_the_minimum_rate_continues_past_the_grace() -> None:
    budget = BodyBudget(1 << 21)
    # 4,000 bytes/s against a minimum of 1,000, for about four times the grace.
    receive = trickling(80, 0.02, 40)
    body = await read_body(scope(3200), receive, 1 << 21, budget, BodyDeadlines(0.2, 1000))
    assert body == b"x" * 3200


async def test_a_request_cancelled_while_its_body_is_read_stays_cancelled() -> None:
    # The client-disconnect path or shutdown cancels the task: that is not a stall.
    budget = BodyBudget(1 << 20)
    reading = asyncio.ensure_future(
        read_body(scope(100), stalling_after([]), 1 << 20, budget, BodyDeadlines(0.05))
    )
    await asyncio.sleep(0)  # let it start waiting for the body
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert budget.in_use == 0


async def test_bodies_read_one_after_another_share_one_sweeper_until_it_goes_idle() -> None:
    # A small body is read whole at once: its watch must not start a task per request.
    deadlines = BodyDeadlines(4.0)  # a tick of 0.5 s: the reads below take far less
    budget = BodyBudget(1 << 20)
    others = asyncio.all_tasks()
    seen: set[asyncio.Task[object]] = set()
    for _ in range(20):
        body = await read_body(
            scope(2), receiving([part(b"hi", more=False)]), 100, budget, deadlines
        )
        assert body == b"hi"
        seen |= asyncio.all_tasks() - others
        await asyncio.sleep(0)  # the sweeper's first step, if one was started
    assert len(seen) == 1
    # Idle for a tick, it ends: nothing is left running for a router with no requests.
    (sweeper,) = seen
    async with asyncio.timeout(2):
        await sweeper
