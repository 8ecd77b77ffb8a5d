"""A log's tail and its followers, the router's own log lines, the log query, and what a
shutdown does to follows: plain calls on the event loop, no sockets."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import pytest

from net import eventually
from slm_server.admin.log_stream import (
    DEFAULT_TAIL,
    LogQuery,
    LogStreams,
    TooManyLogReaders,
    log_name,
    parse_query,
)
from slm_server.admin.router_log import RouterLog, install
from slm_server.log_feed import SLOW_READER, Follower, LogFeed, TooManyFollowers, dropped_note
from slm_server.router.asgi import Message
from slm_server.router.errors import InvalidRequest


def test_the_tail_is_exactly_the_last_lines_asked_for_bounded_by_what_is_kept() -> None:
    feed = LogFeed(tail_lines=50)
    for n in range(80):
        feed.publish(f"line {n}")
    assert feed.tail(3) == ["line 77", "line 78", "line 79"]
    assert feed.tail(0) == []
    assert feed.tail(1000) == [f"line {n}" for n in range(30, 80)]  # all it keeps


def test_the_tail_is_bounded_in_characters_too() -> None:
    feed = LogFeed(tail_lines=1000, tail_chars=100)
    for n in range(10):
        feed.publish(f"{n}" * 29)  # 30 characters with its line end
    assert feed.tail(1000) == ["7" * 29, "8" * 29, "9" * 29]


async def test_a_follower_gets_the_tail_then_every_later_line_once() -> None:
    feed = LogFeed()
    feed.publish("before 1")
    feed.publish("before 2")
    with feed.follow(1) as (tail, follower):
        assert tail == ["before 2"]
        feed.publish("after 1")
        feed.publish("after 2")
        assert await follower.take() == ["after 1", "after 2"]
        waiting = asyncio.create_task(follower.take())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing new: it waits
        feed.publish("after 3")
        assert await asyncio.wait_for(waiting, 1) == ["after 3"]
        assert feed.followers == 1
    assert feed.followers == 0
    assert await follower.take() is None  # closed on the way out


async def test_a_full_follower_drops_lines_and_says_how_many_where_they_were() -> None:
    follower = Follower(max_lines=3)
    for n in range(10):
        follower.offer(f"line {n}")  # never waits, whatever the reader does
    assert await follower.take() == ["line 0", "line 1", "line 2", dropped_note(7, SLOW_READER)]
    follower.offer("line 10")
    assert await follower.take() == ["line 10"]
    assert (
        dropped_note(7, SLOW_READER)
        == "=== slm_server: 7 lines dropped here: this reader was too slow"
    )
    assert (
        dropped_note(1, "the disk was full")
        == "=== slm_server: 1 line dropped here: the disk was full"
    )


async def test_a_follower_queue_is_bounded_in_characters_too() -> None:
    follower = Follower(max_lines=100, max_chars=25)
    for n in range(4):
        follower.offer(f"{n}" * 9)  # 10 characters with its line end
    follower.offer("short")  # it would fit, but must not pass the lines dropped before it
    assert await follower.take() == ["0" * 9, "1" * 9, dropped_note(3, SLOW_READER)]


async def test_a_closed_follower_hands_over_what_it_holds_then_ends() -> None:
    follower = Follower()
    follower.offer("last")
    follower.close()
    assert await follower.take() == ["last"]
    assert await follower.take() is None


def test_a_log_feeds_a_bounded_number_of_followers() -> None:
    feed = LogFeed(max_followers=2)
    with feed.follow(0), feed.follow(0), pytest.raises(TooManyFollowers):  # noqa: SIM117
        with feed.follow(0):
            pass
    with feed.follow(0):  # those that left made room
        assert feed.followers == 1


def test_log_paths_name_a_role_or_the_router() -> None:
    assert log_name("/admin/logs/chat") == "chat"
    assert log_name("/admin/logs/router") == "router"
    assert log_name("/admin/logs/org/model") == "org/model"  # a role may hold a slash
    assert log_name("/admin/logs/") is None
    assert log_name("/admin/reload") is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", LogQuery(DEFAULT_TAIL, False)),
        (b"tail=5", LogQuery(5, False)),
        (b"tail=0&follow=1", LogQuery(0, True)),
        (b"follow=true", LogQuery(DEFAULT_TAIL, True)),
        (b"follow=0&tail=20", LogQuery(20, False)),
        (b"tail=" + b"9" * 5000, LogQuery(10**9, False)),  # more than is kept: all
    ],
)
def test_the_log_query_reads_tail_and_follow(query: bytes, expected: LogQuery) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("query", "param"),
    [(b"tail=-1", "tail"), (b"tail=ten", "tail"), (b"tail=", "tail"), (b"follow=maybe", "follow")],
)
def test_a_bad_log_query_is_a_400_naming_the_field(query: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_query(query)
    assert caught.value.param == param


@pytest.fixture
def router_log() -> logging.Logger:
    # Outside the logging tree: only the handlers a test adds see its lines.
    logger = logging.Logger("test.router_log", logging.INFO)
    logger.propagate = False
    return logger


async def test_router_log_lines_from_any_thread_reach_the_feed_on_the_loop(
    router_log: logging.Logger,
) -> None:
    handler = RouterLog(logging.Formatter("%(levelname)s %(message)s"))
    router_log.addHandler(handler)
    try:
        router_log.info("before the loop serves")  # kept until attached
        handler.attach(asyncio.get_running_loop())
        with handler.feed.follow(10) as (tail, follower):
            assert tail == ["INFO before the loop serves"]
            thread = threading.Thread(target=router_log.warning, args=("from a thread\nline 2",))
            thread.start()
            thread.join(5)
            router_log.info("on the loop")
            lines: list[str] = []
            while len(lines) < 3:
                batch = await asyncio.wait_for(follower.take(), 2)
                assert batch is not None
                lines += batch
            assert lines == ["WARNING from a thread", "line 2", "INFO on the loop"]
    finally:
        router_log.removeHandler(handler)
        handler.detach()


async def test_router_log_lines_waiting_for_the_loop_are_bounded(
    router_log: logging.Logger,
) -> None:
    handler = RouterLog(logging.Formatter("%(message)s"), max_pending_chars=30)
    router_log.addHandler(handler)
    try:
        for n in range(5):
            router_log.info("%s", f"{n}" * 9)  # 10 characters each with its line end
        router_log.info("short")  # it would fit, but must not pass those dropped before it
        handler.attach(asyncio.get_running_loop())
        assert handler.feed.tail(10) == [
            "0" * 9,
            "1" * 9,
            "2" * 9,
            "=== slm_server: 3 lines dropped here: the router could not keep up",
        ]
    finally:
        router_log.removeHandler(handler)
        handler.detach()


async def test_at_shutdown_follows_end_and_a_stuck_one_ends_once_its_client_is_cut_off() -> None:
    feed = LogFeed()
    streams = LogStreams()
    # Set as the server cuts off the client that does not read (see router/shutdown.py):
    # its send then returns and its receive says the client is gone, as uvicorn's do.
    cut_off = asyncio.Event()

    async def receive() -> Message:
        await cut_off.wait()
        return {"type": "http.disconnect"}

    reader: list[Message] = []
    stuck: list[Message] = []

    async def send(message: Message) -> None:
        reader.append(message)

    async def send_stuck(message: Message) -> None:
        stuck.append(message)
        if message.get("body"):  # a line: the socket is full, and stays so
            await cut_off.wait()

    follow = LogQuery(tail=0, follow=True)
    reading = asyncio.create_task(streams.answer(feed, follow, receive, send))
    not_reading = asyncio.create_task(streams.answer(feed, follow, receive, send_stuck))
    await eventually(lambda: feed.followers == 2, 1, "both followers")
    feed.publish("a line")
    await eventually(lambda: len(stuck) == 2, 1, "the stuck send")
    streams.end_all()
    await asyncio.wait_for(reading, 1)
    assert reader[-1] == {
        "type": "http.response.body",
        "body": b"=== slm_server: the server is stopping; this log ends here\n",
        "more_body": False,
    }
    assert not not_reading.done()  # its send still waits on the client
    cut_off.set()
    await asyncio.wait_for(not_reading, 1)  # ends at once, nothing more sent to nobody
    assert len(stuck) == 2
    assert feed.followers == 0
    # A follow asked for once the server is stopping gets the tail and ends.
    late: list[Message] = []

    async def send_late(message: Message) -> None:
        late.append(message)

    await asyncio.wait_for(streams.answer(feed, follow, receive, send_late), 1)
    assert late[-1]["more_body"] is False


def test_installed_it_keeps_the_lines_in_the_format_of_the_first_handler_formatting_once(
    router_log: logging.Logger,
) -> None:
    calls: list[str] = []

    class Counting(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            calls.append(record.getMessage())
            return f"formatted: {record.getMessage()}"

    first = logging.StreamHandler(io.StringIO())
    first.setFormatter(Counting())
    router_log.addHandler(first)
    handler = install(router_log)
    try:
        router_log.info("one line")
        assert calls == ["one line"]  # once, for both handlers
        assert first.stream.getvalue() == "formatted: one line\n"
        loop = asyncio.new_event_loop()
        handler.attach(loop)  # lines logged before are kept from then on
        loop.close()
        assert handler.feed.tail(1) == ["formatted: one line"]
    finally:
        handler.detach()
        router_log.removeHandler(handler)
        router_log.removeHandler(first)


async def test_a_follower_past_the_logs_limit_is_a_429() -> None:
    feed = LogFeed(max_followers=1)
    streams = LogStreams()
    with feed.follow(0):

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            raise AssertionError("nothing is sent before the refusal")

        with pytest.raises(TooManyLogReaders) as refused:
            await streams.answer(feed, LogQuery(0, True), receive, send)
    assert refused.value.status == 429
    assert refused.value.code == "too_many_log_readers"
