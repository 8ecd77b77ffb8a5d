"""The request's deadline over the backend's answer, kept by the request's own timer: it
cuts the answer phase only, says so only for its own cancel, and never outlives the request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


class ToldBy:
    """A server's WATCH_DISCONNECT: keeps the callback, calls it when told to leave."""

    def __init__(self) -> None:
        self.callback: Callable[[], object] | None = None
        self.left = False
        self.watch_calls = 0

    def __call__(self, callback: Callable[[], object] | None) -> None:
        self.watch_calls += 1
        if self.left and callback is not None:
            callback()
            return
        self.callback = callback

    def leave(self) -> None:
        self.left = True
        if self.callback is not None:
            self.callback()


def told_lifetime(told: ToldBy, sent: SentMessages | None = None) -> RequestLifetime:
    return RequestLifetime(
        never_receives, sent or SentMessages(sends_nothing), watch_disconnect=told
    )


async def test_a_client_the_server_says_has_left_ends_the_request_without_a_task() -> None:
    told = ToldBy()
    life = told_lifetime(told)

    async def request() -> str:
        tasks_before = len(asyncio.all_tasks())
        life.begin(BOUND_S, Chat())
        assert len(asyncio.all_tasks()) == tasks_before  # no watcher task
        try:
            return await answer(life, asyncio.get_running_loop().create_future())
        except asyncio.CancelledError:
            assert life.client_left()
            return "left"
        finally:
            life.end()

    task = asyncio.get_running_loop().create_task(request())
    await asyncio.sleep(0.01)
    assert told.callback is not None  # watched from begin on
    told.leave()
    assert await asyncio.wait_for(task, BOUND_S) == "left"
    assert told.callback is None  # end: nothing is told after the request


async def test_a_client_gone_before_the_watch_began_ends_the_request_at_once() -> None:
    told = ToldBy()
    told.left = True
    life = told_lifetime(told)

    async def request() -> str:
        life.begin(BOUND_S, Chat())
        try:
            await asyncio.sleep(BOUND_S)
        except asyncio.CancelledError:
            return "left" if life.client_left() else "cancelled"
        finally:
            life.end()
        return "waited"

    assert await asyncio.wait_for(request(), BOUND_S) == "left"


async def test_a_disconnect_after_the_whole_answer_cancels_nothing() -> None:
    told = ToldBy()
    sent = SentMessages(sends_nothing)
    life = told_lifetime(told, sent)
    life.begin(BOUND_S, Chat())
    await sent.send({"type": "http.response.start", "status": 200, "headers": []})
    await sent.send({"type": "http.response.body", "body": b"{}", "more_body": False})
    told.leave()  # work after the last byte (the log, the metrics) runs on
    await asyncio.sleep(0)
    assert not life.client_left()
    life.end()
