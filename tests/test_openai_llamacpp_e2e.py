"""``backend: openai`` in front of a real llama-server that the test starts itself, as a
server on another machine would be: slm_server only sends it requests, with the key it
asks for (``--api-key``), under the name it knows the model by (``--alias``).

The Gemma 3 270M GGUF, twice: llama-server serves chat or embeddings, not both.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gemma_entry import gemma_path
from net import free_port, wait_until
from router_proc import RouterProcess
from slm_server.backends.llamacpp import find_llama_server

UPSTREAM_KEY = "gpu-box-key-5f2c"
CLIENT_KEY = "client-key-never-forwarded"


class LlamaServer:
    """llama-server on a free loopback port, started and stopped by the test."""

    def __init__(self, log_path: Path, *args: str) -> None:
        binary = find_llama_server()
        assert binary is not None, "llama-server missing: run scripts/sync"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(binary), "--model", gemma_path(), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--ctx-size", "1024", "--threads", "1"]
        command += ["--api-key", UPSTREAM_KEY, "--alias", "gemma-upstream", *args]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self._proc.poll() is not None:
                raise AssertionError(f"llama-server exited: {self.log_path.read_text()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, f"llama-server on port {self.port}")

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def remote(model_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "backend": "openai",
        "base_url": f"{url}/v1",
        "api_key_env": "GPU_BOX_KEY",
        "upstream_model": "gemma-upstream",
        # llama-server answers /health without its key: /v1/models asks for it.
        "health_path": "/v1/models",
        "default_timeout": 120,
        **fields,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    directory = tmp_path_factory.mktemp("remote-llama")
    chat = LlamaServer(directory / "chat.log")
    embed = LlamaServer(directory / "embed.log", "--embeddings", "--pooling", "mean")
    router: RouterProcess | None = None
    try:
        chat.wait_ready(120)
        embed.wait_ready(120)
        config = {
            "models": {
                "chat": remote("gemma-remote", chat.url),
                "embed": remote("gemma-remote-embed", embed.url, model_type="embeddings"),
            }
        }
        env = {"GPU_BOX_KEY": UPSTREAM_KEY}
        router = RouterProcess(config, directory, command="serve", env=env).start()
        # Without the key, llama-server refuses: what works below works by the entry's key.
        refused = httpx.get(f"{chat.url}/v1/models", timeout=5)
        assert refused.status_code == 401, refused.text
        yield router
    finally:
        if router is not None:
            router.stop()
        chat.stop()
        embed.stop()


@pytest.fixture
def sdk(served: RouterProcess) -> Iterator[openai.OpenAI]:
    # The client's own key: wrong for llama-server, so it must never reach it.
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        yield client


def test_health_is_probed_with_the_key(served: RouterProcess) -> None:
    report = served.backends()
    assert report["chat"]["status"] == "healthy", report
    assert report["embed"]["status"] == "healthy", report


def test_chat(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="gemma-remote",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == "gemma-remote"
    assert reply.choices[0].message.content


def test_streamed_chat(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gemma-remote",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) > 2
    assert {chunk.model for chunk in chunks} == {"gemma-remote"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_embeddings(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="gemma-remote-embed", input=["a cat", "tax law"])
    assert result.model == "gemma-remote-embed"
    assert len(result.data) == 2 and len(result.data[0].embedding) > 100


def test_responses_bridged(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(
        model="gemma-remote", input="Say hello.", max_output_tokens=16, temperature=0
    )
    assert first.model == "gemma-remote"
    assert first.output_text
    # The router keeps the conversation: a server elsewhere needs no store of its own.
    second = sdk.responses.create(
        model="gemma-remote",
        input="Again.",
        previous_response_id=first.id,
        max_output_tokens=16,
        temperature=0,
    )
    assert second.output_text


def test_anthropic_messages_bridged(served: RouterProcess) -> None:
    with anthropic.Anthropic(base_url=served.url, api_key=CLIENT_KEY, max_retries=0) as client:
        message = client.messages.create(
            model="gemma-remote",
            max_tokens=16,
            messages=[{"role": "user", "content": "Say hello."}],
        )
    assert message.model == "gemma-remote"
    assert message.content[0].type == "text" and message.content[0].text
