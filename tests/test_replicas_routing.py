"""Requests for a model with several upstreams: spread, retried, kept by session, fallen
back, every answer saying where it went (fake servers behind ``backend: openai``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fake_backend_proc import FakeBackend
from replicas_serving import (
    UPSTREAM,
    chat,
    fakes,
    group_entry,
    kill,
    replica_router,
    single_entry,
)


async def test_least_busy_spreads_slow_requests_evenly_over_four_replicas(
    tmp_path: Path,
) -> None:
    with fakes(4, "--response-delay", "0.3") as replicas:
        entry = group_entry("gemma", replicas, max_concurrency=32)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            answers = await asyncio.gather(*(chat(client, "gemma") for _ in range(64)))
        spread = Counter(upstream for upstream, _ in answers)
        assert set(spread) == {"gemma/0", "gemma/1", "gemma/2", "gemma/3"}
        assert all(14 <= count <= 18 for count in spread.values()), spread
        served = [fake.stats()["completed"] for fake in replicas]
        assert served == [spread[f"gemma/{i}"] for i in range(4)]


async def test_round_robin_takes_the_replicas_in_turn(tmp_path: Path) -> None:
    with fakes(3) as replicas:
        entry = group_entry("gemma", replicas, balance="round_robin")
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            upstreams = [(await chat(client, "gemma"))[0] for _ in range(6)]
    assert upstreams == ["gemma/0", "gemma/1", "gemma/2"] * 2


@pytest.mark.parametrize("status", [503, 429, 502])
async def test_a_refusing_replica_is_retried_on_another(tmp_path: Path, status: int) -> None:
    with fakes(2) as replicas:
        replicas[0].control(fail_status=status)
        entry = group_entry("gemma", replicas, balance="round_robin", cooldown_after=10)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            for _ in range(4):
                assert await chat(client, "gemma") == ("gemma/1", "gemma")
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{url}/metrics")).text
        # Requests went to the refusing one first, and were answered by the other.
        refused = replicas[0].stats()["requests"]
        assert refused >= 2
        assert replicas[1].stats()["completed"] == 4
        line = f'slm_upstream_attempts_total{{model="gemma",result="{status}",upstream="gemma/0"}}'
        assert f"{line} {refused}.0" in metrics
        assert (
            'slm_upstream_attempts_total{model="gemma",result="answered",upstream="gemma/1"} 4.0'
            in metrics
        )


async def test_a_bad_request_is_not_retried(tmp_path: Path) -> None:
    with fakes(2) as replicas:
        for fake in replicas:
            fake.control(fail_status=400)
        entry = group_entry("gemma", replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            with pytest.raises(openai.BadRequestError) as caught:
                await chat(client, "gemma")
        assert caught.value.response.headers[UPSTREAM] in ("gemma/0", "gemma/1")
        assert sum(fake.stats()["requests"] for fake in replicas) == 1


async def test_when_retries_run_out_the_client_gets_the_upstreams_own_refusal(
    tmp_path: Path,
) -> None:
    with fakes(3) as replicas:
        for fake in replicas:
            fake.control(fail_status=429)
        entry = group_entry("gemma", replicas, retries=1)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            with pytest.raises(openai.RateLimitError) as caught:
                await chat(client, "gemma")
        assert caught.value.body == {  # passed on as the upstream said it
            "message": "fake failure",
            "type": "invalid_request_error",
            "param": None,
            "code": "fake_error",
        }
        assert caught.value.response.headers["x-slm-attempts"] == "2"
        assert sum(fake.stats()["requests"] for fake in replicas) == 2  # one retry only


async def test_a_replica_that_is_down_is_cooled_down_and_the_others_answer(
    tmp_path: Path,
) -> None:
    with fakes(2) as replicas, FakeBackend().start() as dead:
        kill(dead)  # nothing listens on its port any more
        group = [replicas[0], dead, replicas[1]]
        entry = group_entry("gemma", group, balance="round_robin", cooldown_after=2)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            upstreams = [(await chat(client, "gemma"))[0] for _ in range(8)]
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{url}/v1/backends/health")).json()
                metrics = (await http.get(f"{url}/metrics")).text
        assert "gemma/1" not in upstreams
        assert health["gemma@1"]["replica_of"] == "gemma"
        assert health["gemma@1"]["balancer"] == "cooling"
        assert health["gemma@0"]["balancer"] == "in_rotation"
        assert 'slm_upstream_cooling{model="gemma",upstream="gemma/1"} 1.0' in metrics
        assert 'slm_upstream_cooling{model="gemma",upstream="gemma/0"} 0.0' in metrics
        # Two refused connections took it out; none was sent to it after.
        assert 'result="refused",upstream="gemma/1"} 2.0' in metrics


async def test_a_session_stays_on_one_replica_and_moves_when_it_dies(tmp_path: Path) -> None:
    with fakes(3) as replicas:
        entry = group_entry("gemma", replicas, affinity="session", cooldown_after=1)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            session = {"extra_headers": {"x-session-id": "conversation-7"}}
            first = {(await chat(client, "gemma", **session))[0] for _ in range(5)}
            assert len(first) == 1
            by_user = {(await chat(client, "gemma", user="alice"))[0] for _ in range(5)}
            assert len(by_user) == 1
            # Other requests meanwhile spread as usual.
            others = {(await chat(client, "gemma"))[0] for _ in range(6)}
            assert len(others) == 3

            (home,) = first
            kill(replicas[int(home.rpartition("/")[2])])
            moved = {(await chat(client, "gemma", **session))[0] for _ in range(5)}
            assert len(moved) == 1 and moved != first


async def test_the_fallback_model_answers_when_every_replica_is_down(tmp_path: Path) -> None:
    with fakes(2) as replicas, FakeBackend().start() as backup:
        for fake in replicas:
            kill(fake)
        models = {
            "gemma": group_entry("gemma", replicas, fallbacks=["backup"]),
            "backup": single_entry("backup", backup),
        }
        async with replica_router(tmp_path, models) as (_, client, _):
            for _ in range(4):  # refused at first, then straight to it while they cool
                assert await chat(client, "gemma") == ("backup/0", "backup")
        assert backup.last_request()["body"].count('"model": "backup"') == 1


async def test_an_entry_with_one_upstream_falls_back_too(tmp_path: Path) -> None:
    with FakeBackend().start() as main, FakeBackend().start() as backup:
        main.control(fail_status=503)
        models = {
            "main": single_entry("main", main, fallbacks=["backup"]),
            "backup": single_entry("backup", backup),
        }
        async with replica_router(tmp_path, models) as (_, client, _):
            assert await chat(client, "main") == ("backup/0", "backup")
            assert await chat(client, "backup") == ("backup/0", "backup")


HI = {"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}


async def test_retries_stay_inside_the_requests_deadline(tmp_path: Path) -> None:
    asked: list[asyncio.StreamWriter] = []

    async def reset_after_a_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        asked.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)
        writer.transport.abort()

    peers = [await asyncio.start_server(reset_after_a_second, "127.0.0.1", 0) for _ in range(3)]
    try:
        urls = [f"http://127.0.0.1:{peer.sockets[0].getsockname()[1]}/v1" for peer in peers]
        entry = {"id": "gemma", "backend": "openai", "base_urls": urls, "retries": 3}
        entry["default_timeout"] = 1.5
        router = replica_router(tmp_path, {"gemma": entry})
        async with router as (_, _c, url), httpx.AsyncClient() as http:
            began = time.monotonic()
            answer = await http.post(f"{url}/v1/chat/completions", json=HI, timeout=10)
            took = time.monotonic() - began
        # The first reset after 1 s, a retry cut at the deadline; no third one after it.
        assert answer.status_code == 504
        assert answer.headers["x-slm-attempts"] == "2"
        assert len(asked) == 2
        assert 1.4 < took < 2.0, took
    finally:
        for writer in asked:  # the one the deadline cut is still waiting to reset
            writer.transport.abort()
        for peer in peers:
            peer.close()
            await peer.wait_closed()


async def test_an_entry_with_one_upstream_says_where_it_went(tmp_path: Path) -> None:
    with FakeBackend().start() as fake:
        async with replica_router(tmp_path, {"solo": single_entry("m", fake)}) as (app, c, _):
            assert await chat(c, "m") == ("solo/0", "m")
            assert "solo" not in app.table.groups and app.table.backends["solo"].balancer is None


async def test_a_group_is_listed_once_and_its_replicas_each_in_health(tmp_path: Path) -> None:
    with fakes(3) as replicas:
        entry = group_entry("gemma", replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            listed = [model async for model in client.models.list()]
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{url}/v1/backends/health")).json()
    assert [model.id for model in listed] == ["gemma"]
    extra = listed[0].model_extra or {}
    assert extra["role"] == "gemma" and extra["replicas"] == 3
    assert sorted(health) == ["gemma@0", "gemma@1", "gemma@2"]
    assert {report["replica_of"] for report in health.values()} == {"gemma"}
    assert {report["balancer"] for report in health.values()} == {"in_rotation"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_responses_conversation_goes_back_where_it_was_answered(
    tmp_path: Path, stream: bool
) -> None:
    with fakes(3) as replicas:
        entry = group_entry("gemma", replicas, balance="round_robin", affinity="session")
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            for _ in range(3):  # each conversation starts wherever the turn is
                first = await client.responses.with_raw_response.create(
                    model="gemma", input="hi", stream=stream
                )
                answer = first.parse()
                if isinstance(answer, openai.AsyncStream):
                    events = [event async for event in answer]
                    assert events[-1].type == "response.completed"
                    answer_id = events[-1].response.id
                else:
                    answer_id = answer.id
                later = await client.responses.with_raw_response.create(
                    model="gemma", input="and then?", previous_response_id=answer_id
                )
                assert later.headers[UPSTREAM] == first.headers[UPSTREAM]


async def test_a_reload_that_drops_a_replica_keeps_the_others_and_their_standing(
    tmp_path: Path,
) -> None:
    with fakes(3) as replicas, FakeBackend().start() as dead:
        kill(dead)
        group = [replicas[0], dead, replicas[1], replicas[2]]
        entry = group_entry("gemma", group, cooldown_after=1, cooldown_s=60)
        async with replica_router(tmp_path, {"gemma": entry}) as (app, client, url):
            while "gemma@1" not in {
                role
                for role, backend in app.table.backends.items()
                if backend.attempts.get("refused")
            }:
                await chat(client, "gemma")
            balancer = app.table.groups["gemma"].balancer
            fewer = group_entry("gemma", group[:3], cooldown_after=1, cooldown_s=60)
            (tmp_path / "models.yaml").write_text(
                yaml.safe_dump({"models": {"gemma": fewer}, "router": {}})
            )
            async with httpx.AsyncClient() as http:
                reloaded = await http.post(f"{url}/admin/reload", timeout=30)
                assert reloaded.status_code == 200, reloaded.text
                health = (await http.get(f"{url}/v1/backends/health")).json()
            assert app.table.groups["gemma"].balancer is balancer
            assert sorted(health) == ["gemma@0", "gemma@1", "gemma@2"]
            assert health["gemma@1"]["balancer"] == "cooling"  # still the dead one, still out
            upstreams = {(await chat(client, "gemma"))[0] for _ in range(6)}
            assert upstreams == {"gemma/0", "gemma/2"}


async def test_a_reload_that_drops_a_middle_replica_leaves_its_cooldown_behind(
    tmp_path: Path,
) -> None:
    with fakes(3) as replicas, FakeBackend().start() as dead:
        kill(dead)
        group = [replicas[0], dead, replicas[1], replicas[2]]
        entry = group_entry("gemma", group, cooldown_after=1, cooldown_s=60)
        async with replica_router(tmp_path, {"gemma": entry}) as (app, client, url):
            while not app.table.backends["gemma@1"].attempts.get("refused"):
                await chat(client, "gemma")
            fewer = group_entry("gemma", replicas, cooldown_after=1, cooldown_s=60)
            (tmp_path / "models.yaml").write_text(
                yaml.safe_dump({"models": {"gemma": fewer}, "router": {}})
            )
            async with httpx.AsyncClient() as http:
                reloaded = await http.post(f"{url}/admin/reload", timeout=30)
                assert reloaded.status_code == 200, reloaded.text
                health = (await http.get(f"{url}/v1/backends/health")).json()
            # gemma@1 is now replicas[1], which never failed: the dead one's cooldown is gone.
            assert {report["balancer"] for report in health.values()} == {"in_rotation"}
            before = [fake.stats()["completed"] for fake in replicas]
            upstreams = {(await chat(client, "gemma"))[0] for _ in range(6)}
            after = [fake.stats()["completed"] for fake in replicas]
        assert upstreams == {"gemma/0", "gemma/1", "gemma/2"}
        assert all(later > earlier for earlier, later in zip(before, after, strict=True))


async def test_an_answer_broken_off_before_any_of_it_went_out_is_retried(
    tmp_path: Path,
) -> None:
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head; the body is never read
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b'content-length: 500\r\n\r\n{"id": "chatcmpl-cut')
        await writer.drain()
        writer.close()

    broken = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = broken.sockets[0].getsockname()[1]
    try:
        with fakes(1) as [whole]:
            entry = group_entry("gemma", [whole], balance="round_robin", cooldown_after=10)
            entry["base_urls"].insert(0, f"http://127.0.0.1:{port}/v1")
            async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
                # Round robin sends every other request to the broken one first.
                answers = [await chat(client, "gemma") for _ in range(4)]
            assert whole.stats()["completed"] == 4
        assert answers == [("gemma/1", "gemma")] * 4
    finally:
        broken.close()
        await broken.wait_closed()


async def test_a_replica_that_accepts_no_connection_is_left_for_another_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from slm_server.router import proxy

    monkeypatch.setattr(proxy, "CONNECT_TIMEOUT_S", 0.5)
    # A listener that never accepts, its queue filled: further connects hang unanswered,
    # as to a machine that is off.
    with socket.socket() as silent, socket.socket() as filler:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        filler.connect(silent.getsockname())
        with fakes(1) as [whole]:
            entry = group_entry("gemma", [whole], balance="round_robin", cooldown_after=10)
            entry["base_urls"].insert(0, f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
            async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
                started = time.monotonic()
                answers = [await chat(client, "gemma") for _ in range(2)]
                took = time.monotonic() - started
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"{url}/metrics")).text
    assert answers == [("gemma/1", "gemma")] * 2
    # Each request tried the silent one first (the cursor moves past the retry's pick too),
    # for one connect timeout each, far from the request's default_timeout (10 s).
    assert took < 5
    waited = 'result="connect_timeout",upstream="gemma/0"} 2.0'
    assert waited in metrics, metrics
