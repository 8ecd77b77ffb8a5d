"""An MLX backend for real on Linux: MLX's CPU build serving a converted Gemma 3 270M.

``mlx-openai-server`` is not on the router's PATH here, so ``serve`` runs the
model on ``mlx_lm.server``: the path a light install takes (the real server has
tests of its own, in ``test_mlx_openai_server_e2e``). The model is built once
from the packaged GGUF (see ``gguf_to_mlx``) and cached. MLX on a CPU makes a
few tokens a second: requests ask for very few.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import openai
import pytest

from gguf_to_mlx import cached_mlx_model
from net import free_port
from router_proc import RouterProcess, serving
from slm_server.backends.mlx import find_openai_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the CPU build of MLX")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    assert find_openai_server() is None, "these tests are about the mlx_lm.server path"
    entry = {
        "id": "gemma-mlx",
        "backend": "mlx",
        "port": free_port(),
        "host": "127.0.0.1",
        "model_path": str(cached_mlx_model()),
        "default_timeout": 120,
        "quantization": "bf16",
    }
    config = {"models": {"chat": entry}}
    process = RouterProcess(config, tmp_path_factory.mktemp("mlx"), command="serve")
    with serving(process, ready_within_s=240):
        yield process


@pytest.fixture
def sdk(served: RouterProcess) -> Iterator[openai.OpenAI]:
    with served.openai() as client:
        yield client


def test_the_choice_of_server_is_logged(served: RouterProcess) -> None:
    assert "mlx-openai-server is not installed; serving it with mlx_lm.server" in served.log()


def test_chat(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="gemma-mlx",  # the router rewrites it to the path mlx_lm.server knows
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=3,
        temperature=0,
    )
    assert reply.model == "gemma-mlx"  # not the path the server answers with
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_streamed_chat(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gemma-mlx",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=3,
        temperature=0,
        stream=True,
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert {chunk.model for chunk in chunks} == {"gemma-mlx"}
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(texts) >= 2  # token by token
    assert chunks[-1].choices[0].finish_reason == "length"


def test_responses_through_the_bridge(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="gemma-mlx", input="The capital of France is", max_output_tokens=3
    )
    # It has no /v1/responses, as its launch spec says: converted without a try.
    assert raw.headers["x-slm-converted-from"] == "chat-completions; reason=not-served"
    response = raw.parse()
    assert response.status == "incomplete"  # cut by max_output_tokens
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens == 3


def test_embeddings_are_refused_clearly(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        sdk.embeddings.create(model="gemma-mlx", input="x")
