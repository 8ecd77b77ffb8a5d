"""A router app in this process serving models from fake replicas (``backend: openai``
with ``base_urls``), loaded from YAML as a user's file is, and clients to it."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import openai
import yaml

from fake_backend_proc import FakeBackend
from router_served import served
from slm_server.config import load_config
from slm_server.router.app import RouterApp

UPSTREAM = "x-slm-upstream"


def group_entry(model_id: str, fakes: Sequence[FakeBackend], **fields: Any) -> dict[str, Any]:
    """An openai entry with one upstream per fake (``fields`` override)."""
    return {
        "id": model_id,
        "backend": "openai",
        "base_urls": [f"{fake.url}/v1" for fake in fakes],
        "default_timeout": 10,
        **fields,
    }


def single_entry(model_id: str, fake: FakeBackend, **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "backend": "openai",
        "base_url": f"{fake.url}/v1",
        "default_timeout": 10,
        **fields,
    }


@contextmanager
def fakes(count: int, *args: str) -> Iterator[list[FakeBackend]]:
    """``count`` fake servers started with ``args``, stopped on exit."""
    with ExitStack() as stack:
        yield [stack.enter_context(FakeBackend().start(args)) for _ in range(count)]


def kill(fake: FakeBackend) -> None:
    """SIGKILL the fake by its PID, as a crash would end it; wait until it is gone."""
    os.kill(fake.pid, signal.SIGKILL)
    assert fake.returncode(5) is not None
    fake.stop()


@asynccontextmanager
async def replica_router(
    tmp_path: Path, models: dict[str, dict[str, Any]], **router: Any
) -> AsyncIterator[tuple[RouterApp, openai.AsyncOpenAI, str]]:
    """The router for ``models`` (role -> entry), a client that never retries by itself,
    and the router's base URL."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "router": router}))
    app = RouterApp(load_config(path))
    async with served(app) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            yield app, client, url
        finally:
            await client.close()


async def chat(client: openai.AsyncOpenAI, model: str, **fields: Any) -> tuple[str, str]:
    """One chat completion: the upstream that answered (x-slm-upstream) and the model the
    answer names."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **fields
    )
    completion = raw.parse()
    return raw.headers[UPSTREAM], completion.model
