"""The order of a shutdown whose grace ran out: the requests cut short end, then the backends.

``GracefulServer`` in this process, on a real socket, around the router app and the fake
backend; the app is wrapped to see when each step reaches it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
import uvicorn

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from net import eventually
from router_served import App
from slm_server.router.app import RouterApp
from slm_server.router.asgi import Message, Receive, Scope, Send
from slm_server.router.http1 import Http1Protocol
from slm_server.router.shutdown import GracefulServer

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@asynccontextmanager
async def graceful(app: App, grace_s: float) -> AsyncIterator[tuple[GracefulServer, str]]:
    """``app`` under the router's own server; yields it and its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # Typed int, but any number works: it bounds an asyncio timeout.
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        http=Http1Protocol,
        timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]
    )
    server = GracefulServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or serving.done(), 15, "uvicorn to start")
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    endless = ["--chunks", "100000", "--chunk-delay", "0.05"]  # ended only by the router
    with FakeBackend().start(endless) as backend:
        yield backend


async def test_requests_cut_short_end_before_the_lifespan_stops_the_backends(
    fake: FakeBackend,
) -> None:
    router = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))
    steps: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def lifespan_receive() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    steps.append("lifespan shutdown")  # where the backends are stopped
                return message

            return await router(scope, lifespan_receive, send)

        async def slow_client_send(message: Message) -> None:
            if b"shutting_down" in message.get("body", b""):
                await asyncio.sleep(0.2)  # a client slow to take the last event
                steps.append("last event")
            await send(message)

        await router(scope, receive, slow_client_send)

    async with (
        graceful(app, 0.3) as (server, url),
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=CHAT) as stream,
    ):
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        server.should_exit = True  # as SIGTERM does
        rest = [line async for line in lines]
    assert "shutting_down" in rest[-2]  # the last event, then its blank line
    assert steps == ["last event", "lifespan shutdown"]


async def test_a_responses_stream_cut_short_raises_a_clear_error_in_the_openai_sdk(
    fake: FakeBackend,
) -> None:
    fake.control(no_responses=True)  # converted: the fake streams no Responses of its own
    router = RouterApp(make_config({"chat": entry("m-chat", fake.port)}))
    async with graceful(router, 0.3) as (server, url):
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
        stream = await sdk.responses.create(model="m-chat", input="hi", stream=True)
        events = aiter(stream)
        await anext(events)
        server.should_exit = True
        with pytest.raises(openai.APIError, match="shutting down") as raised:
            async for _ in events:
                pass
        assert raised.value.code == "shutting_down"
        await sdk.close()


async def test_a_request_already_ending_on_a_cancel_of_its_own_is_not_cancelled_again() -> None:
    # E.g. a body deadline fired and the request is sending its 408 when the grace ends: a
    # second cancel would land on that last send and cut it off.
    said: list[str] = []

    async def request() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # its own last answer going out
            said.append("its last answer")
            raise

    config = uvicorn.Config(lambda *_: None, log_config=None)
    server = GracefulServer(config)
    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    task.cancel()  # its own cancel, before the grace ran out
    await asyncio.sleep(0.05)  # it is now sending its last answer
    server.server_state.tasks.add(task)
    await server._end_requests()
    assert said == ["its last answer"]
    assert task.done()
