"""The bound on request body bytes held at once, and reading a body against it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from pydantic import ValidationError

from slm_server.config import RouterSettings
from slm_server.router.asgi import ClientDisconnected, Message, Receive, read_body
from slm_server.router.body_budget import BodyBudget
from slm_server.router.errors import BodyStalled, BodyTooLarge, TooManyBodies


def test_what_does_not_fit_is_refused_and_counts_nothing() -> None:
    budget = BodyBudget(100)
    budget.take(60)
    with pytest.raises(TooManyBodies) as refused:
        budget.take(41)
    assert refused.value.status == 503
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    assert budget.in_use == 60
    budget.take(40)
    budget.give_back(100)
    assert budget.in_use == 0


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
    budget = BodyBudget(100)
    budget.take(50)
    never: list[Message] = []  # the body is never asked for: refused on its headers
    with pytest.raises(TooManyBodies):
        await read_body(scope(60), receiving(never), 1000, budget)
    assert budget.in_use == 50


async def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    budget = BodyBudget(100)
    parts = [part(b"x" * 40, more=True), part(b"x" * 40, more=True), part(b"x" * 40, more=False)]
    with pytest.raises(TooManyBodies):
        await read_body(scope(None), receiving(parts), 1000, budget)
    assert budget.in_use == 0  # the 80 bytes read before the refusal were given back

    parts = [part(b"a" * 30, more=True), part(b"b" * 30, more=False)]
    body = await read_body(scope(None), receiving(parts), 1000, budget)
    assert body == b"a" * 30 + b"b" * 30
    assert budget.in_use == 60  # the caller's, until it gives len(body) back


async def test_a_client_leaving_mid_upload_gives_its_bytes_back() -> None:
    budget = BodyBudget(100)
    for length in (None, 90):
        parts = [part(b"x" * 20, more=True), {"type": "http.disconnect"}]
        with pytest.raises(ClientDisconnected):
            await read_body(scope(length), receiving(parts), 1000, budget)
        assert budget.in_use == 0


async def test_a_body_over_the_size_limit_gives_its_bytes_back() -> None:
    budget = BodyBudget(100)
    parts = [part(b"x" * 8, more=True), part(b"x" * 8, more=False)]
    with pytest.raises(BodyTooLarge):
        await read_body(scope(None), receiving(parts), 10, budget)
    with pytest.raises(BodyTooLarge):
        await read_body(scope(16), receiving(parts), 10, budget)
    assert budget.in_use == 0


async def test_a_large_declared_body_arrives_whole_and_in_order() -> None:
    budget = BodyBudget(1 << 22)
    pieces = [bytes([65 + index]) * 100_000 for index in range(5)]
    parts = [part(piece, more=index < 4) for index, piece in enumerate(pieces)]
    body = await read_body(scope(500_000), receiving(parts), 1 << 22, budget)
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
    ],
)
async def test_a_stalled_upload_is_ended_and_gives_its_bytes_back(
    length: int | None, parts: list[Message]
) -> None:
    budget = BodyBudget(1 << 20)
    with pytest.raises(BodyStalled) as stalled:
        async with asyncio.timeout(5):
            await read_body(scope(length), stalling_after(parts), 1 << 20, budget, 0.05)
    assert stalled.value.status == 408
    assert budget.in_use == 0
