"""What the balancer learns from each attempt: only the upstream's own doing counts against
it (fake servers behind ``backend: openai`` with ``base_urls``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fake_backend_proc import FakeBackend
from net import eventually
from replicas_serving import (
    UPSTREAM,
    chat,
    fakes,
    group_entry,
    kill,
    replica_router,
    single_entry,
)


async def test_requests_that_time_out_in_the_routers_queue_cool_no_replica(
    tmp_path: Path,
) -> None:
    with fakes(2, "--chunks", "20", "--chunk-delay", "0.1") as replicas:
        entry = group_entry(
            "gemma", replicas, max_concurrency=1, default_timeout=1, cooldown_after=2
        )
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):

            async def stream() -> None:
                answer = await client.chat.completions.create(
                    model="gemma", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for _ in answer:
                    pass

            streams = [asyncio.create_task(stream()) for _ in range(2)]  # one slot each
            await eventually(
                lambda: sum(fake.stats()["requests"] for fake in replicas) == 2, 5, "both busy"
            )
            queued = await asyncio.gather(
                *(chat(client, "gemma") for _ in range(4)), return_exceptions=True
            )
            assert all(
                isinstance(error, openai.APIStatusError) and error.status_code == 504
                for error in queued
            ), queued
            await asyncio.gather(*streams)
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{url}/v1/backends/health")).json()
            assert {report["balancer"] for report in health.values()} == {"in_rotation"}
            assert [fake.stats()["requests"] for fake in replicas] == [1, 1]  # none reached
            assert (await chat(client, "gemma"))[1] == "gemma"


async def test_a_fallback_the_key_may_not_use_is_skipped(tmp_path: Path) -> None:
    with fakes(3) as [gemma, premium, open_]:
        kill(gemma)
        models = {
            "gemma": single_entry("gemma", gemma, fallbacks=["premium", "open"]),
            "premium": single_entry("premium", premium),
            "open": single_entry("open", open_),
        }
        keys = [{"name": "alice", "key": "sk-alice-000000000000", "models": ["gemma", "open"]}]
        async with replica_router(tmp_path, models, api_keys=keys) as (_, _c, url):
            alice = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="sk-alice-000000000000", max_retries=0
            )
            async with alice:
                with pytest.raises(openai.PermissionDeniedError):
                    await chat(alice, "premium")
                assert await chat(alice, "gemma") == ("open/0", "open")
        assert premium.stats()["requests"] == 0


@pytest.mark.parametrize("retries", [1, 3])
async def test_the_last_refusal_reaches_the_client_as_the_upstream_sent_it(
    tmp_path: Path, retries: int
) -> None:
    with fakes(2) as replicas:
        for fake in replicas:
            fake.control(fail_status=503)
        entry = group_entry("gemma", replicas, retries=retries, cooldown_after=10)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            with pytest.raises(openai.InternalServerError) as caught:
                await chat(client, "gemma")
    assert caught.value.status_code == 503
    assert caught.value.body == {  # the upstream's own, whatever the retries
        "message": "fake failure",
        "type": "server_error",
        "param": None,
        "code": "fake_error",
    }
    assert caught.value.response.headers["x-slm-attempts"] == "2"
    assert caught.value.response.headers[UPSTREAM] in ("gemma/0", "gemma/1")


@pytest.mark.parametrize("status", [503, 429])
async def test_a_refusal_on_the_last_retry_goes_on_to_the_fallback(
    tmp_path: Path, status: int
) -> None:
    with fakes(2) as replicas, FakeBackend().start() as backup:
        for fake in replicas:
            fake.control(fail_status=status)
        models = {
            "gemma": group_entry("gemma", replicas, fallbacks=["backup"], cooldown_after=10),
            "backup": single_entry("backup", backup),
        }
        async with replica_router(tmp_path, models) as (_, client, _):
            raw = await client.chat.completions.with_raw_response.create(
                model="gemma", messages=[{"role": "user", "content": "hi"}]
            )
        assert [fake.stats()["requests"] for fake in replicas] == [1, 1]
    assert raw.parse().model == "backup"
    assert raw.headers[UPSTREAM] == "backup/0"
    assert raw.headers["x-slm-attempts"] == "3"  # both replicas (one retry), then backup


async def test_with_no_retry_a_refusal_goes_to_a_fallback_or_to_the_client_as_it_came(
    tmp_path: Path,
) -> None:
    with fakes(2) as replicas, FakeBackend().start() as backup:
        for fake in replicas:
            fake.control(fail_status=503)
        models = {
            "gemma": group_entry("gemma", replicas, retries=0, fallbacks=["backup"]),
            "alone": group_entry("alone", replicas, retries=0),
            "backup": single_entry("backup", backup),
        }
        async with replica_router(tmp_path, models) as (_, client, _):
            raw = await client.chat.completions.with_raw_response.create(
                model="gemma", messages=[{"role": "user", "content": "hi"}]
            )
            with pytest.raises(openai.APIStatusError) as caught:
                await chat(client, "alone")
        assert sum(fake.stats()["requests"] for fake in replicas) == 2  # one attempt each
    assert raw.parse().model == "backup"
    assert raw.headers[UPSTREAM] == "backup/0"
    assert raw.headers["x-slm-attempts"] == "2"  # no retry: one replica, then the fallback
    assert caught.value.status_code == 503
    # With nothing to move on to, the upstream's answer reaches the client as it came
    # (whether relayed at once or held as a refusal first: the client cannot tell).
    assert caught.value.body == {
        "message": "fake failure",
        "type": "server_error",
        "param": None,
        "code": "fake_error",
    }
    assert "x-slm-attempts" not in caught.value.response.headers


async def test_the_routers_overhead_leaves_out_a_failed_attempts_wait(tmp_path: Path) -> None:
    async def reset_after_a_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)
        writer.transport.abort()

    slow = await asyncio.start_server(reset_after_a_second, "127.0.0.1", 0)
    port = slow.sockets[0].getsockname()[1]
    try:
        with fakes(1) as [whole]:
            entry = group_entry("gemma", [whole], balance="round_robin")
            entry["base_urls"].insert(0, f"http://127.0.0.1:{port}/v1")
            async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
                raw = await client.chat.completions.with_raw_response.create(
                    model="gemma", messages=[{"role": "user", "content": "hi"}]
                )
        assert raw.headers["x-slm-attempts"] == "2"  # the slow one first, then the other
        assert float(raw.headers["x-slm-overhead-ms"]) < 500
    finally:
        slow.close()
        await slow.wait_closed()


async def standing(url: str) -> dict[str, str]:
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{url}/v1/backends/health")).json()
    return {role: report["balancer"] for role, report in health.items()}


def first_fails_and_cools(replicas: list[FakeBackend]) -> dict[str, Any]:
    """``gemma`` on ``replicas`` in turn; the first answers 503, which takes it out for
    0.3 s (then a request probes it)."""
    replicas[0].control(fail_status=503)
    return group_entry("gemma", replicas, balance="round_robin", cooldown_after=1, cooldown_s=0.3)


async def test_a_probe_the_router_refuses_itself_brings_no_replica_back(
    tmp_path: Path,
) -> None:
    with fakes(2) as replicas:
        entry = first_fails_and_cools(replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            assert await chat(client, "gemma") == ("gemma/1", "gemma")  # after gemma/0's 503
            await asyncio.sleep(0.4)  # gemma/0's probe is due
            # The probe goes to gemma/0, and the router answers it without asking it.
            with pytest.raises(openai.NotFoundError):
                await client.responses.create(
                    model="gemma", input="and then?", previous_response_id="resp_unknown"
                )
            assert (await standing(url))["gemma@0"] == "cooling"  # still out, probe still due
            assert replicas[0].stats()["requests"] == 1
            assert await chat(client, "gemma") == ("gemma/1", "gemma")  # probed: 503 again
            assert replicas[0].stats()["requests"] == 2


async def test_a_probe_that_streams_brings_its_replica_back_at_its_head(tmp_path: Path) -> None:
    with fakes(2, "--chunks", "20", "--chunk-delay", "0.1") as replicas:
        entry = first_fails_and_cools(replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            assert await chat(client, "gemma") == ("gemma/1", "gemma")
            replicas[0].control(fail_status=None)  # it recovers
            await asyncio.sleep(0.4)
            probe = await client.chat.completions.with_raw_response.create(
                model="gemma", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert probe.headers[UPSTREAM] == "gemma/0"
            stream = probe.parse()
            assert (await standing(url))["gemma@0"] == "in_rotation"  # not when the stream ends
            async for _ in stream:
                pass


@pytest.mark.parametrize("fail_text", [None, "Internal Server Error"])
async def test_a_replica_answering_500_is_passed_on_and_cooled_down(
    tmp_path: Path, fail_text: str | None
) -> None:
    with fakes(2) as replicas:
        replicas[0].control(fail_status=500, fail_text=fail_text)
        entry = group_entry("gemma", replicas, balance="round_robin", cooldown_after=2)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            got = []
            for _ in range(6):
                try:
                    got.append((await chat(client, "gemma"))[0])
                except openai.InternalServerError as error:  # not retried: its answer
                    got.append(f"500 from {error.response.headers[UPSTREAM]}")
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{url}/metrics")).text
            assert (await standing(url))["gemma@0"] == "cooling"
        assert got == ["500 from gemma/0", "gemma/1", "500 from gemma/0"] + ["gemma/1"] * 3
        assert replicas[0].stats()["requests"] == 2
        assert 'result="server_error",upstream="gemma/0"} 2.0' in metrics
        assert 'result="answered",upstream="gemma/0"' not in metrics


async def test_an_attempt_that_found_a_full_queue_is_not_counted_as_sent(
    tmp_path: Path,
) -> None:
    with FakeBackend().start() as main, FakeBackend().start() as backup:
        main.control(fail_status=503)
        backup.control(response_delay=2)
        models = {
            "main": single_entry("main", main, fallbacks=["backup"]),
            "backup": single_entry("backup", backup, max_concurrency=1),
        }
        async with replica_router(tmp_path, models, max_queue=0) as (_, client, _):
            busy = asyncio.create_task(chat(client, "backup"))  # backup's one slot
            await eventually(lambda: backup.stats()["in_flight"] == 1, 5, "backup busy")
            # main's 503, then backup's full queue: nothing more went upstream.
            with pytest.raises(openai.RateLimitError) as caught:
                await chat(client, "main")
            await busy
    headers = caught.value.response.headers
    assert caught.value.code == "queue_full"
    assert headers[UPSTREAM] == "main/0"
    assert "x-slm-attempts" not in headers


async def test_a_responses_conversation_continues_on_any_replica_without_affinity(
    tmp_path: Path,
) -> None:
    with fakes(2) as replicas:
        entry = group_entry(
            "gemma", replicas, balance="round_robin", native_endpoints=["/v1/responses"]
        )
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, _):
            first = await client.responses.with_raw_response.create(model="gemma", input="hi")
            # The router keeps the conversation itself, native answers too: the next turn
            # is converted from its store, so the replica that never saw the id answers it.
            later = await client.responses.with_raw_response.create(
                model="gemma", input="and then?", previous_response_id=first.parse().id
            )
        assert {first.headers[UPSTREAM], later.headers[UPSTREAM]} == {"gemma/0", "gemma/1"}
        assert later.parse().output_text
        assert [fake.last_request()["path"] for fake in replicas] == [
            "/v1/responses",
            "/v1/chat/completions",
        ]


async def test_streams_broken_after_their_head_cool_their_replica(tmp_path: Path) -> None:
    with fakes(2) as replicas:
        replicas[0].control(hold_streams=True)  # a good head, then nothing until cut
        entry = group_entry(
            "gemma", replicas, balance="round_robin", cooldown_after=2, default_timeout=1
        )
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            broken = answered = 0
            for _ in range(8):
                stream = await client.chat.completions.with_raw_response.create(
                    model="gemma", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                try:
                    async for _ in stream.parse():
                        pass
                    answered += 1
                except openai.APIError:
                    assert stream.headers[UPSTREAM] == "gemma/0"
                    broken += 1
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{url}/v1/backends/health")).json()
    # Two broken streams in a row take it out: the other six go to gemma/1.
    assert (broken, answered) == (2, 6)
    assert health["gemma@0"]["balancer"] == "cooling"


async def test_a_failure_picked_before_a_reload_counts_against_no_server_after_it(
    tmp_path: Path,
) -> None:
    async def reset_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)
        writer.transport.abort()

    slow = await asyncio.start_server(reset_later, "127.0.0.1", 0)
    slow_url = f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}/v1"
    fields = {"balance": "round_robin", "cooldown_after": 1, "cooldown_s": 60, "retries": 0}
    try:
        with fakes(2) as replicas:
            entry = group_entry("gemma", replicas, **fields)
            entry["base_urls"].insert(1, slow_url)  # gemma@1, until the reload
            async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
                assert (await chat(client, "gemma"))[0] == "gemma/0"
                on_slow = asyncio.create_task(chat(client, "gemma"))
                await asyncio.sleep(0.3)
                without = {"models": {"gemma": group_entry("gemma", replicas, **fields)}}
                (tmp_path / "models.yaml").write_text(yaml.safe_dump(without))
                async with httpx.AsyncClient() as http:
                    reloaded = await http.post(f"{url}/admin/reload", timeout=30)
                    assert reloaded.status_code == 200, reloaded.text
                    with pytest.raises(openai.APIStatusError):
                        await on_slow  # its server reset it; gemma@1 is another one now
                    health = (await http.get(f"{url}/v1/backends/health")).json()
                assert health["gemma@1"]["balancer"] == "in_rotation"
                upstreams = {(await chat(client, "gemma"))[0] for _ in range(4)}
        assert upstreams == {"gemma/0", "gemma/1"}
    finally:
        slow.close()
        await slow.wait_closed()


async def test_a_probe_whose_client_leaves_first_lets_the_next_request_probe(
    tmp_path: Path,
) -> None:
    # A probe never reported would keep its upstream out of rotation until a reload.
    with fakes(2) as replicas:
        entry = first_fails_and_cools(replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            assert await chat(client, "gemma") == ("gemma/1", "gemma")  # gemma/0 is out
            replicas[0].control(fail_status=None, response_delay=3.0)
            await asyncio.sleep(0.4)  # its cooldown is over: the next request probes it
            async with httpx.AsyncClient(timeout=0.5) as http:
                with pytest.raises(httpx.TimeoutException):  # the client leaves first
                    await http.post(
                        f"{url}/v1/chat/completions",
                        json={"model": "gemma", "messages": [{"role": "user", "content": "hi"}]},
                    )
            replicas[0].wait_stats(requests=2)
            replicas[0].control(response_delay=0.0)
            # The left probe was abandoned: the next request probes gemma/0 again.
            assert await chat(client, "gemma") == ("gemma/0", "gemma")
