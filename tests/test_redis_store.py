"""The Redis store against a real redis-server: owners, expiry, size, outages, closing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from net import eventually
from redis_server import RedisServer, running_redis
from slm_server.stores import StoreUnreachable
from slm_server.stores.redis_store import MAX_CONNECTIONS, RedisStore
from tcp_link import TcpLink

HI = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


def store_at(server: RedisServer, **options: Any) -> RedisStore:
    settings: dict[str, Any] = {"password": None, "ttl_s": 60, "max_bytes": 1 << 20}
    return RedisStore(server.url, **(settings | options))


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    made = store_at(redis_server)
    yield made
    await made.aclose()


async def test_a_conversation_comes_back_for_its_owner_alone(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert await store.put("resp_1", HI, "alice")
    got = await store.get("resp_1", "alice")
    assert got == HI and got is not HI
    assert await store.get("resp_1", "bob") is None
    assert await store.get("resp_1", None) is None
    assert await store.get("resp_2", "alice") is None
    assert redis_server.keys() == [b"slm:resp:alice:resp_1"]


async def test_a_value_the_router_did_not_write_is_as_good_as_unknown(
    store: RedisStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.command(b"SET", b"slm:resp::resp_x", b"not a conversation")
    assert await store.get("resp_x", None) is None
    assert "slm:resp::resp_x holds no conversation the router wrote" in caplog.text


async def test_each_turn_is_set_to_expire(redis_server: RedisServer) -> None:
    store = store_at(redis_server, ttl_s=5)
    try:
        assert await store.put("resp_1", HI, None)
        pttl = int(redis_server.command(b"PTTL", b"slm:resp::resp_1")[1:].strip())
        assert 0 < pttl <= 5000
    finally:
        await store.aclose()


async def test_an_expired_turn_is_unknown(redis_server: RedisServer) -> None:
    store = store_at(redis_server, ttl_s=0.3)
    try:
        assert await store.put("resp_1", HI, None)
        await eventually(lambda: redis_server.keys() == [], 5, "the turn to expire")
        assert await store.get("resp_1", None) is None
    finally:
        await store.aclose()


async def test_a_conversation_over_the_byte_limit_is_not_stored(redis_server: RedisServer) -> None:
    store = store_at(redis_server, max_bytes=100)
    try:
        assert not await store.put("resp_big", [{"role": "user", "content": "w" * 200}], None)
        assert await store.put("resp_small", HI, None)
        assert redis_server.keys() == [b"slm:resp::resp_small"]
    finally:
        await store.aclose()


async def test_an_outage_is_said_once_and_its_end_too(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpLink(redis_server.port) as link:
        store = RedisStore(
            link.url, password=None, ttl_s=60, max_bytes=1 << 20, probe_interval_s=0.1
        )
        try:
            assert await store.put("resp_1", HI, None)
            link.cut()
            with caplog.at_level(logging.INFO, logger="slm_server.stores"):
                for _ in range(3):
                    with pytest.raises(StoreUnreachable, match="is unreachable; try again"):
                        await store.get("resp_1", None)
                    with pytest.raises(StoreUnreachable):
                        await store.put("resp_2", HI, None)
                lost = [r for r in caplog.records if "cannot be used" in r.getMessage()]
                assert len(lost) == 1
                assert f"redis://127.0.0.1:{link.port}" in lost[0].getMessage()
                link.mend()
                # No request asks Redis during the outage: the store finds it back by itself.
                await eventually(lambda: store.reachable, 5, "the store to find Redis back")
                assert await store.get("resp_1", None) == HI
                assert await store.put("resp_3", HI, None)
                assert sum("is back" in r.getMessage() for r in caplog.records) == 1
        finally:
            await store.aclose()


async def test_during_an_outage_calls_fail_at_once_instead_of_waiting_the_timeout(
    tmp_path: Path,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads until the router hangs up, answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisStore(url, password=None, ttl_s=60, max_bytes=1000, timeout_s=1)
    try:
        with pytest.raises(StoreUnreachable, match=r"did not answer within 1 s"):
            await store.get("resp_1", None)  # the one call that finds the outage waits
        started = time.monotonic()
        for n in range(5):
            with pytest.raises(StoreUnreachable, match=r"did not answer within 1 s"):
                await store.get(f"resp_{n}", None)
            with pytest.raises(StoreUnreachable):
                await store.put(f"resp_{n}", HI, None)
        assert time.monotonic() - started < 0.5  # ten calls, not one of them waiting 1 s
    finally:
        await store.aclose()
        server.close()
        await server.wait_closed()


async def test_a_redis_that_refuses_the_router_is_said_at_the_check_with_its_cause(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.command(b"CONFIG", b"SET", b"requirepass", b"the-right-one")
    store = store_at(redis_server, password="a-wrong-one")
    try:
        await store.check()
        [said] = [r.getMessage() for r in caplog.records if "refused the router" in r.getMessage()]
        assert "invalid username-password pair" in said
        assert "response_store_password_env" in said
        with pytest.raises(StoreUnreachable) as refused:
            await store.get("resp_1", None)
        assert str(refused.value).endswith("refused the router; the router's log says why")
        assert "try again" not in str(refused.value)  # it will not help
    finally:
        await store.aclose()


async def test_more_concurrent_calls_than_connections_wait_for_one(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert await store.put("resp_1", HI, None)
    many = 3 * MAX_CONNECTIONS  # past redis-py's default pool of 100, which refuses
    got = await asyncio.gather(*(store.get("resp_1", None) for _ in range(many)))
    assert got == [HI] * many
    assert store.reachable
    assert connected_clients(redis_server) <= MAX_CONNECTIONS + 1  # the store's, and ours


async def test_a_redis_that_never_answers_costs_at_most_the_timeout(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(
        f"redis://127.0.0.1:{port}/0", password=None, ttl_s=60, max_bytes=1000, timeout_s=0.3
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match=r"did not answer within 0\.3 s"):
            await store.get("resp_1", None)
        assert time.monotonic() - started < 2
        assert accepted  # it did connect: the wait was for the answer
    finally:
        await store.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def connected_clients(server: RedisServer) -> int:
    info = server.command(b"INFO", b"clients").decode()
    return int(info.split("connected_clients:")[1].split()[0])


async def test_closing_the_store_closes_its_connections(redis_server: RedisServer) -> None:
    store = store_at(redis_server)
    await asyncio.gather(*(store.put(f"resp_{n}", HI, None) for n in range(4)))
    assert connected_clients(redis_server) > 1  # the store's, and the one asking
    await store.aclose()
    await eventually(lambda: connected_clients(redis_server) == 1, 5, "connections closed")


def test_without_redis_server_its_tests_skip_unless_ci_requires_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from redis_server import redis_server_binary

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server on it
    monkeypatch.delenv("SLM_REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_server_binary()
    monkeypatch.setenv("SLM_REQUIRE_REDIS", "1")
    with pytest.raises(pytest.fail.Exception, match="SLM_REQUIRE_REDIS=1"):
        redis_server_binary()
