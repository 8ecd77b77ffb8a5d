"""The real ``mlx-openai-server`` on Linux's CPU, launched and routed by ``serve``.

The server lives in an environment of its own (see ``mlx_openai_server_venv``), put on the
router's PATH as a user's ``uv tool install`` or Homebrew would. It serves the converted
Gemma 3 270M as an lm model and all-MiniLM-L6-v2 (shipped on PyPI) as an embeddings model.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gguf_to_mlx import cached_mlx_model
from mlx_openai_server_venv import cached_venv_bin, embeddings_model_dir
from net import free_port, wait_until
from router_proc import RouterProcess, serving

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the CPU build of MLX")


@pytest.fixture(scope="module")
def venv_bin() -> Path:
    return cached_venv_bin()


def _entry(model_id: str, model_path: Path | str, model_type: str) -> dict[str, object]:
    return {
        "id": model_id,
        "backend": "mlx",
        "model_type": model_type,
        "port": free_port(),
        "host": "127.0.0.1",
        "model_path": str(model_path),
        "default_timeout": 120,
        "quantization": "bf16" if model_type == "lm" else "fp32",
    }


def _router(config: dict[str, Any], tmp: Path, venv_bin: Path, **env: str) -> RouterProcess:
    path = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    return RouterProcess(config, tmp, command="serve", env={"PATH": path, **env})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, venv_bin: Path) -> Iterator[RouterProcess]:
    config = {
        "models": {
            "chat": _entry("gemma-mlx", cached_mlx_model(), "lm"),
            "embed": _entry("minilm", embeddings_model_dir(venv_bin), "embeddings"),
        }
    }
    process = _router(config, tmp_path_factory.mktemp("mlx-openai-server"), venv_bin)
    with serving(process, ready_within_s=240):
        yield process


@pytest.fixture
def sdk(served: RouterProcess) -> Iterator[openai.OpenAI]:
    with served.openai() as client:
        yield client


def test_launched_with_mlx_openai_server(served: RouterProcess, venv_bin: Path) -> None:
    assert "mlx_lm.server" not in served.log()
    for report in served.backends().values():
        assert report["state"] == "ready"
        assert isinstance(report["pid"], int)


def test_chat(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="gemma-mlx",
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=3,
        temperature=0,
    )
    assert reply.model == "gemma-mlx"  # --served-model-name: no rewriting needed
    assert reply.choices[0].message.content
    # Its finish_reason says "stop" even when max_tokens cut the reply; the count is right.
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 3


def test_streamed_chat(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gemma-mlx",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=3,
        temperature=0,
        stream=True,
    )
    texts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2  # token by token


def test_responses_native(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="gemma-mlx", input="The capital of France is", max_output_tokens=3
    )
    assert "x-slm-converted-from" not in raw.headers  # it has /v1/responses of its own
    assert raw.parse().output_text


def test_messages_through_the_bridge(served: RouterProcess) -> None:
    with anthropic.Anthropic(base_url=served.url, api_key="-", max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="gemma-mlx",
            max_tokens=3,
            messages=[{"role": "user", "content": "The capital of France is"}],
        )
    # No /v1/messages there, as its launch spec says: converted without a try.
    assert raw.headers["x-slm-converted-from"] == "chat-completions; reason=not-served"
    message = raw.parse()
    assert message.content and message.content[0].type == "text"


def test_embeddings(sdk: openai.OpenAI) -> None:
    texts = ["A cat sat on the mat.", "A kitten was sitting on a rug.", "Stock prices fell."]
    result = sdk.embeddings.create(model="minilm", input=texts)
    vectors = [item.embedding for item in result.data]
    assert [len(v) for v in vectors] == [384, 384, 384]  # all-MiniLM-L6-v2's width

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    # A real model, not noise: the paraphrase is nearer than the unrelated sentence.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_a_missing_hub_model_fails_with_its_message(tmp_path: Path, venv_bin: Path) -> None:
    """Offline, an HF id that is not cached fails with the server's own words.

    Its first failed start is enough: the three starts before ``failed`` are the
    supervisor's, tested on the fake backend, and each costs this server ~20 s of imports.
    """
    config = {"models": {"gone": _entry("gone", "slm-server-tests/no-such-model", "lm")}}
    process = _router(config, tmp_path, venv_bin, HF_HUB_OFFLINE="1").start()
    try:
        # The reason shows while the supervisor waits to restart it (and once it gave up).
        reasons: list[str] = []

        def failed_once() -> bool:
            reasons.append(str(process.backends()["gone"].get("reason", "")))
            return "while starting" in reasons[-1]

        wait_until(failed_once, 180, "a failed start")
        # huggingface_hub's own explanation, relayed from the server's last log lines.
        assert "outgoing traffic has been disabled" in reasons[-1]
    finally:
        process.stop()
