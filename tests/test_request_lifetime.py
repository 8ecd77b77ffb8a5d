"""The request's deadline over the backend's answer, kept by the request's own timer: it
cuts the answer phase only, says so only for its own cancel, and never outlives the request."""

from __future__ import annotations

import asyncio

import pytest

from slm_server.router.asgi import Message
from slm_server.router.errors import BackendTimeout
from slm_server.router.lifetime import ANSWERING, RequestLifetime
from slm_server.router.sent import SentMessages

BOUND_S = 5  # no test here waits anywhere near this long unless the deadline failed


async def never_receives() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def sends_nothing(message: Message) -> None:
    return None


class Chat:
    label = "'chat'"


def lifetime() -> RequestLifetime:
    return RequestLifetime(never_receives, SentMessages(sends_nothing))


async def answer(life: RequestLifetime, waiting: asyncio.Future[None]) -> str:
    """What forward does around the backend's answer, awaiting ``waiting`` for it."""
    life.answer_begins()
    try:
        await waiting
    except asyncio.CancelledError:
        if life.answer_cut():
            raise life.ran_out(ANSWERING) from None
        raise
    finally:
        life.answer_ends()
    return "answered"


async def test_the_deadline_cuts_an_answer_that_is_not_done_by_then() -> None:
    life = lifetime()

    async def request() -> str:
        life.begin(0.05, Chat())
        try:
            return await answer(life, asyncio.get_running_loop().create_future())
        finally:
            life.end()

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendTimeout) as timed_out:
        await asyncio.wait_for(request(), BOUND_S)
    said = "'chat': its default_timeout of 0.05s ran out while waiting for the backend's answer"
    assert str(timed_out.value) == said
    assert loop.time() - started < BOUND_S / 2  # at the deadline, not at this test's bound


async def test_an_answer_done_in_time_is_not_cut_and_nothing_is_cut_after_it() -> None:
    life = lifetime()
    after = asyncio.Event()

    async def request() -> str:
        life.begin(0.05, Chat())
        try:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            result = await answer(life, done)
            # A stream relayed past the deadline once its head is in: never cut for it.
            await asyncio.sleep(0.1)
            after.set()
            return result
        finally:
            life.end()

    assert await asyncio.wait_for(request(), BOUND_S) == "answered"
    assert after.is_set()


async def test_an_answer_asked_for_after_the_deadline_is_refused_at_once() -> None:
    life = lifetime()

    async def request() -> None:
        life.begin(0.01, Chat())
        try:
            await asyncio.sleep(0.05)  # a converted retry after a slow native try, say
            with pytest.raises(BackendTimeout):
                life.answer_begins()
        finally:
            life.end()

    await asyncio.wait_for(request(), BOUND_S)


async def test_a_cancel_that_is_not_the_deadlines_goes_on_as_a_cancel() -> None:
    life = lifetime()
    asked = asyncio.Event()

    async def request() -> str:
        life.begin(60, Chat())
        try:
            waiting = asyncio.get_running_loop().create_future()
            asked.set()
            return await answer(life, waiting)
        finally:
            life.end()

    task = asyncio.create_task(request())
    await asyncio.wait_for(asked.wait(), BOUND_S)
    task.cancel()  # a shutdown, say
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND_S)


async def test_a_client_leaving_a_stream_relayed_past_a_short_deadline_ends_it() -> None:
    # A deadline before the first watch: the deadline's own tick must start the watch.
    async def leaves() -> Message:
        return {"type": "http.disconnect"}

    life = RequestLifetime(leaves, SentMessages(sends_nothing))

    async def request() -> str:
        life.begin(0.01, Chat())
        loop = asyncio.get_running_loop()
        try:
            head = loop.create_future()
            head.set_result(None)
            await answer(life, head)  # the head is in at once
            await loop.create_future()  # then a stream is relayed, past the deadline
        except asyncio.CancelledError:
            if life.client_left():
                return "client left"
            raise
        finally:
            life.end()
        return "unreachable"

    assert await asyncio.wait_for(request(), BOUND_S) == "client left"
