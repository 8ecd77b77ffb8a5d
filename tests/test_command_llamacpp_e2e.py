"""``backend: command`` with the real llama-server as the command, run by ``serve``.

The same GGUF as the llamacpp end-to-end tests (Gemma 3 270M), started from a command
line the entry writes itself: it must be supervised, restarted and stopped exactly as a
``backend: llamacpp`` entry is.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gemma_entry import gemma_path
from net import free_port, wait_until
from router_proc import RouterProcess, serving
from slm_server.backends.llamacpp import find_llama_server


def llama_server_entry(model_id: str, **fields: Any) -> dict[str, Any]:
    binary = find_llama_server()
    assert binary is not None, "llama-server missing: run scripts/sync"
    command = [str(binary), "--model", "{model_path}", "--host", "{host}", "--port", "{port}"]
    command += ["--alias", "{id}", "--ctx-size", "{context_length}", "--threads", "1"]
    return {
        "id": model_id,
        "backend": "command",
        "port": free_port(),
        "host": "127.0.0.1",
        "model_path": gemma_path(),
        "default_timeout": 120,
        "context_length": 1024,
        "command": command,
        "ready_timeout_s": 120,
        **fields,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = {"models": {"chat": llama_server_entry("gemma-command")}}
    process = RouterProcess(config, tmp_path_factory.mktemp("command"), command="serve")
    with serving(process, ready_within_s=180):
        yield process


def ask(router: RouterProcess) -> str:
    with router.openai() as client:
        reply = client.chat.completions.create(
            model="gemma-command",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
    assert reply.choices[0].message.role == "assistant"
    return reply.choices[0].message.content or ""


def test_the_model_answers_a_chat(served: RouterProcess) -> None:
    assert ask(served)
    report = served.backends()["chat"]
    assert (report["backend"], report["state"], report["restarts"]) == ("command", "ready", 0)


def test_killed_it_is_restarted_and_answers_again(served: RouterProcess) -> None:
    before = served.backends()["chat"]
    assert before["state"] == "ready"
    os.kill(before["pid"], signal.SIGKILL)
    wait_until(
        lambda: served.backends()["chat"]["restarts"] == before["restarts"] + 1,
        30,
        "the restart to be counted",
    )
    wait_until(lambda: served.backends()["chat"]["state"] == "ready", 120, "ready again")
    after = served.backends()["chat"]
    assert after["pid"] != before["pid"] and psutil.pid_exists(after["pid"])
    assert ask(served)


def test_stopping_serve_stops_it_with_its_stop_signal(tmp_path: Path) -> None:
    config = {"models": {"chat": llama_server_entry("gemma-command", stop_signal="SIGINT")}}
    process = RouterProcess(config, tmp_path, command="serve").start()
    try:
        pid = process.wait_backends_ready(180)["chat"]["pid"]
        server = psutil.Process(pid)
        assert server.name().startswith("llama-server")
    finally:
        process.stop()  # SIGTERM, as Ctrl-C or a service manager would
    assert not psutil.pid_exists(pid)
    log = (tmp_path / "logs" / "gemma-command.log").read_text()
    assert "stopping it: SIGINT, SIGKILL after 10s" in log
    assert "after SIGINT; SIGKILL" not in process.log()  # it stopped on the signal itself
