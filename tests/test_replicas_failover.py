"""A replica killed under load: no request whose answer had not started fails, a stream
on it ends with an error event, and it is back in rotation once it runs again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from fake_backend_proc import FakeBackend
from net import eventually
from replicas_serving import UPSTREAM, chat, fakes, group_entry, kill, replica_router

CONNECTIONS = 32


async def test_a_replica_killed_under_load_fails_no_request_and_comes_back(
    tmp_path: Path,
) -> None:
    with fakes(4, "--response-delay", "0.05") as replicas:
        entry = group_entry("gemma", replicas, max_concurrency=8, cooldown_s=1)
        async with replica_router(tmp_path, {"gemma": entry}) as (_, client, url):
            answered: list[str] = []
            failed: list[BaseException] = []
            stop = asyncio.Event()

            async def connection() -> None:
                while not stop.is_set():
                    try:
                        answered.append((await chat(client, "gemma"))[0])
                    except openai.APIError as error:
                        failed.append(error)

            workers = [asyncio.create_task(connection()) for _ in range(CONNECTIONS)]
            await asyncio.sleep(1)
            victim = replicas[2]
            port = victim.port
            kill(victim)
            killed_at = len(answered)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*workers)
            assert failed == []  # none of their answers had started: all were retried
            after = answered[killed_at + CONNECTIONS :]  # past those in flight at the kill
            assert after and "gemma/2" not in after
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{url}/v1/backends/health")).json()
                assert health["gemma@2"]["balancer"] == "cooling"

                # Started again on its port: once its cooldown is over, a request probes it,
                # and it is back in rotation.
                with FakeBackend().start(["--port", str(port)]):
                    deadline = time.monotonic() + 10
                    while "gemma/2" not in {(await chat(client, "gemma"))[0] for _ in range(8)}:
                        assert time.monotonic() < deadline, "the replica never came back"
                        await asyncio.sleep(0.2)
                    health = (await http.get(f"{url}/v1/backends/health")).json()
                    assert health["gemma@2"]["balancer"] == "in_rotation"


async def test_a_stream_on_a_replica_that_dies_ends_with_an_error_event(tmp_path: Path) -> None:
    with fakes(2, "--chunks", "50", "--chunk-delay", "0.1") as replicas:
        entry = group_entry("gemma", replicas)
        async with replica_router(tmp_path, {"gemma": entry}) as (app, client, _):
            async with client.chat.completions.with_streaming_response.create(
                model="gemma", messages=[{"role": "user", "content": "hi"}], stream=True
            ) as response:
                upstream = response.headers[UPSTREAM]
                events = await response.parse()
                first = await events.__anext__()
                assert first.choices[0].delta is not None
                kill(replicas[int(upstream.rpartition("/")[2])])
                with pytest.raises(openai.APIError) as caught:
                    async for _ in events:
                        pass
            assert "broke off" in caught.value.message
            dead = app.table.backends[f"gemma@{upstream.rpartition('/')[2]}"]
            await eventually(lambda: dead.attempts.get("broken") == 1, 5, "the failure noted")
            # The next requests go to the other one.
            others = {(await chat(client, "gemma"))[0] for _ in range(4)}
            assert upstream not in others
