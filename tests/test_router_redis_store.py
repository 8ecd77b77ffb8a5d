"""Two real routers sharing one real redis-server continue each other's conversations.

Both route to one fake backend that has only Chat Completions (``--no-responses``), so
every /v1/responses request is converted and its turn kept in Redis (one test has a
backend that answers /v1/responses itself); the official openai SDK is the client, as a
user behind a load balancer would have it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from net import wait_until
from redis_server import RedisServer, running_redis
from router_proc import RouterProcess
from tcp_link import TcpLink

ALICE_KEY = "alice-7c1d9e2b4f60"
BOB_KEY = "bob-3a8e5f1c0d27"
KEYS = {"SLM_TEST_KEY_ALICE": ALICE_KEY, "SLM_TEST_KEY_BOB": BOB_KEY}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend().start(["--no-responses", "--chunks", "3"]) as backend:
        yield backend


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def routers(
    count: int, fake: FakeBackend, tmp: Path, router: dict[str, Any], env: dict[str, str]
) -> list[RouterProcess]:
    config = {"models": {"chat": entry("m-chat", fake.port, default_timeout=10)}, "router": router}
    made = []
    for n in range(count):
        (tmp / f"r{n}").mkdir()
        made.append(RouterProcess(config, tmp / f"r{n}", env=env))
    return made


@pytest.fixture(scope="module")
def pair(
    fake: FakeBackend, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, openai.OpenAI]]:
    started: list[RouterProcess] = []
    try:
        for process in routers(2, fake, tmp_path_factory.mktemp("pair"), _shared(redis), {}):
            started.append(process.start())
        yield started[0].openai(), started[1].openai()
    finally:
        for process in started:
            process.stop()


def _shared(redis: RedisServer, **more: Any) -> dict[str, Any]:
    return {"response_store_url": redis.url, **more}


def chat_messages_sent(fake: FakeBackend) -> list[dict[str, Any]]:
    request = fake.last_request()
    assert request["path"] == "/v1/chat/completions"
    messages: list[dict[str, Any]] = json.loads(request["body"])["messages"]
    return messages


def test_a_conversation_begun_on_one_router_continues_on_the_other(
    pair: tuple[openai.OpenAI, openai.OpenAI], fake: FakeBackend
) -> None:
    one, two = pair
    first = one.responses.create(model="m-chat", input="My name is Ada.")
    second = two.responses.create(
        model="m-chat", input="What is my name?", previous_response_id=first.id
    )
    assert second.output_text == "echo: What is my name?"
    assert chat_messages_sent(fake) == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "echo: My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    third = one.responses.create(model="m-chat", input="And again?", previous_response_id=second.id)
    assert third.output_text == "echo: And again?"
    assert len(chat_messages_sent(fake)) == 5  # both earlier turns, then this one


def test_a_streamed_turn_is_stored_before_the_stream_ends(
    pair: tuple[openai.OpenAI, openai.OpenAI], fake: FakeBackend
) -> None:
    one, two = pair
    with one.responses.stream(model="m-chat", input="Count to three.") as stream:
        first = stream.get_final_response()
    # Asked the moment the stream has ended: the turn must already be in Redis.
    second = two.responses.create(model="m-chat", input="Again.", previous_response_id=first.id)
    assert second.output_text == "echo: Again."
    assert chat_messages_sent(fake)[:2] == [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": first.output_text},
    ]


def test_a_conversation_is_found_only_by_the_key_that_made_it(
    fake: FakeBackend, redis: RedisServer, tmp_path: Path
) -> None:
    api_keys = [
        {"name": "alice", "key_env": "SLM_TEST_KEY_ALICE"},
        {"name": "bob", "key_env": "SLM_TEST_KEY_BOB"},
    ]
    started: list[RouterProcess] = []
    try:
        for process in routers(2, fake, tmp_path, _shared(redis, api_keys=api_keys), KEYS):
            started.append(process.start())
        one, two = (f"{process.url}/v1" for process in started)
        alice_one = openai.OpenAI(base_url=one, api_key=ALICE_KEY, max_retries=0)
        alice_two = openai.OpenAI(base_url=two, api_key=ALICE_KEY, max_retries=0)
        bob_two = openai.OpenAI(base_url=two, api_key=BOB_KEY, max_retries=0)
        first = alice_one.responses.create(model="m-chat", input="A secret of Alice's.")
        with pytest.raises(openai.NotFoundError, match="unknown or expired"):
            bob_two.responses.create(
                model="m-chat", input="Tell me.", previous_response_id=first.id
            )
        follow = alice_two.responses.create(
            model="m-chat", input="Tell me.", previous_response_id=first.id
        )
        assert follow.output_text == "echo: Tell me."
    finally:
        for process in started:
            process.stop()


def test_without_redis_answers_go_out_and_a_continue_gets_a_clear_503(
    fake: FakeBackend, tmp_path: Path
) -> None:
    with running_redis(tmp_path) as redis:
        [process] = routers(1, fake, tmp_path, _shared(redis), {})
        client = process.start().openai()
        try:
            first = client.responses.create(model="m-chat", input="Before the outage.")
            redis.stop()
            during = client.responses.create(model="m-chat", input="During the outage.")
            assert during.output_text == "echo: During the outage."
            with client.responses.stream(model="m-chat", input="Streamed, too.") as stream:
                assert stream.get_final_response().output_text == "tok0 tok1 tok2 "
            answer = httpx.post(
                f"{process.url}/v1/responses",
                json={"model": "m-chat", "input": "Go on.", "previous_response_id": first.id},
                timeout=10,
            )
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert error["code"] == "response_store_unavailable"
            assert error["type"] == "server_error"
            assert error["param"] == "previous_response_id"
            assert "Responses store (Redis at redis://127.0.0.1:" in error["message"]
            assert "is unreachable; try again once it is back" in error["message"]
            assert process.log().count("cannot be used") == 1  # once for the whole outage
            assert "-> 503" not in process.log()  # not again for each request
        finally:
            process.stop()


def test_an_expired_turn_is_unknown(fake: FakeBackend, tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis:
        [process] = routers(1, fake, tmp_path, _shared(redis, response_store_ttl_s=0.5), {})
        client = process.start().openai()
        try:
            first = client.responses.create(model="m-chat", input="Soon forgotten.")
            assert len(redis.keys()) == 1
            wait_until(lambda: redis.keys() == [], 10, "the turn to expire in Redis")
            with pytest.raises(openai.NotFoundError, match=r"response_store_ttl_s"):
                client.responses.create(
                    model="m-chat", input="Remember?", previous_response_id=first.id
                )
        finally:
            process.stop()


def test_a_native_answer_is_in_redis_before_the_client_has_it(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The client's next turn goes, the moment it has the answer, to a router nearer Redis
    than the one that answered (whose commands take 0.3 s to get there)."""
    with FakeBackend().start() as native, TcpLink(redis.port, delay_s=0.3) as far_link:
        models = {"chat": entry("m-chat", native.port, default_timeout=10)}
        started: list[RouterProcess] = []
        try:
            for n, url in enumerate((far_link.url, redis.url)):
                (tmp_path / f"r{n}").mkdir()
                config = {"models": models, "router": {"response_store_url": url}}
                started.append(RouterProcess(config, tmp_path / f"r{n}").start())
            far, near = (process.openai() for process in started)
            first = far.responses.create(model="m-chat", input="My name is Ada.")
            assert native.last_request()["path"] == "/v1/responses"  # answered natively
            second = near.responses.create(
                model="m-chat", input="What is my name?", previous_response_id=first.id
            )
            assert second.output_text == "echo: What is my name?"
            assert chat_messages_sent(native)[:2] == [
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "echo: My name is Ada."},
            ]
        finally:
            for process in started:
                process.stop()


def test_a_redis_that_refuses_the_router_is_said_at_start_and_to_the_client(
    fake: FakeBackend, tmp_path: Path
) -> None:
    with running_redis(tmp_path) as redis:
        redis.command(b"CONFIG", b"SET", b"requirepass", b"the-right-one")
        router = _shared(redis, response_store_password_env="SLM_TEST_REDIS_PASSWORD")
        env = {"SLM_TEST_REDIS_PASSWORD": "a-wrong-one"}
        [process] = routers(1, fake, tmp_path, router, env)
        client = process.start().openai()
        try:
            # Said at start-up, with the cause, before any request needs the store.
            assert "refused the router (invalid username-password pair" in process.log()
            answered = client.responses.create(model="m-chat", input="Answered all the same.")
            assert answered.output_text == "echo: Answered all the same."
            answer = httpx.post(
                f"{process.url}/v1/responses",
                json={"model": "m-chat", "input": "Go on.", "previous_response_id": answered.id},
                timeout=10,
            )
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert error["code"] == "response_store_unavailable"
            assert error["message"].endswith("refused the router; the router's log says why")
            assert process.log().count("refused the router (") == 1
            assert "-> 503" not in process.log()
        finally:
            process.stop()
