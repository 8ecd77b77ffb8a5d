"""``ps``, ``load`` and ``unload`` as a user runs them: against an instance that ``start``
started (real ``serve``, fake llama-servers on its PATH), found through what ``start``
recorded, with no ``--url``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}


class Instance:
    """A directory with a config and a fake llama-server; ``slm`` runs the CLI there."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "m.gguf").write_bytes(b"GGUF")  # never read: the fake ignores --model
        bin_dir = fake_llama_server.install(directory / "bin")
        self.env = {k: v for k, v in os.environ.items() if k != "SLM_SERVER_CONFIG"} | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLM_SERVER_CACHE": str(directory / "cache"),  # its check result stays out of ours
            fake_llama_server.ARGS_ENV: "--chunks 100000 --chunk-delay 0.05",
        }

    def model(self, model_id: str, **fields: Any) -> dict[str, Any]:
        return entry(model_id, free_port(), model_path=str(self.dir / "m.gguf"), **fields)

    def write_config(self, models: dict[str, dict[str, Any]], **router: Any) -> None:
        config = {"models": models, "router": router}
        (self.dir / "models.yaml").write_text(yaml.safe_dump(config))

    def slm(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slm_server", *args, "--config", "models.yaml"],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        return self.slm("start", "--port", str(self.port), "--wait", "60", timeout=90)

    def ps(self) -> dict[str, dict[str, str]]:
        """``ps``'s table: role -> column title -> cell."""
        result = self.slm("ps")
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.splitlines()
        titles = re.split(r" {2,}", header)
        table: dict[str, dict[str, str]] = {}
        for line in rows:
            cells = dict(zip(titles, re.split(r" {2,}", line), strict=True))
            table[cells["ROLE"]] = cells
        return table

    def health(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = httpx.get(
            f"{self.url}/v1/backends/health", timeout=10
        ).json()
        return report


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    made = Instance(tmp_path)
    yield made
    made.slm("stop")


def test_ps_shows_each_model_of_the_instance_start_started(instance: Instance) -> None:
    instance.write_config({"chat": instance.model("m-chat")})
    started = instance.start()
    assert started.returncode == 0, started.stdout + started.stderr

    with (
        httpx.Client(base_url=instance.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT | {"stream": True}) as stream,
    ):
        lines = stream.iter_lines()  # kept: a dropped iterator would close the connection
        assert next(lines).startswith("data: ")  # the answer has begun: it is in flight
        busy = instance.ps()["chat"]
    assert busy["MODEL"] == "m-chat" and busy["STATE"] == "ready"
    assert (busy["IN FLIGHT"], busy["QUEUED"], busy["IDLE"]) == ("1", "0", "-")
    assert re.fullmatch(r"\d+ MB / (\d+ MB|-)", busy["MEMORY"]), busy["MEMORY"]
    assert busy["PINNED"] == "no" and busy["TTL LEFT"] == "-"

    # The client has gone: the router ends the request, and the model is idle from then.
    latest: dict[str, str] = {}

    def nothing_in_flight() -> bool:
        latest.update(instance.ps()["chat"])
        return latest["IN FLIGHT"] == "0"

    wait_until(nothing_in_flight, 10, "the request to end")
    assert re.fullmatch(r"\d+ s", latest["IDLE"]), latest


def test_load_and_unload_an_on_demand_model(instance: Instance) -> None:
    instance.write_config(
        {
            "embed": instance.model("m-embed", model_type="embeddings", pinned=True),
            "chat": instance.model("m-chat", on_demand=True, idle_ttl_s=600, memory_gb=0.4),
        },
        memory_budget_gb=2,
    )
    started = instance.start()
    assert started.returncode == 0, started.stdout + started.stderr
    assert "chat (m-chat): not loaded (starts on its first request)" in started.stdout
    assert f"1 of 1 model(s) ready at {instance.url}; 1 more load on demand" in started.stdout

    table = instance.ps()
    assert table["chat"]["STATE"] == "unloaded"
    assert table["chat"]["MEMORY"] == "- / 400 MB"  # memory_gb, decimal as in the config
    assert table["embed"]["STATE"] == "ready" and table["embed"]["PINNED"] == "yes"

    loaded = instance.slm("load", "chat")
    assert loaded.returncode == 0, loaded.stderr
    first, outcome = loaded.stdout.splitlines()
    assert first == "loading chat..."
    pid = instance.health()["chat"]["pid"]
    assert re.fullmatch(rf"chat: ready \(PID {pid}(, \d+ MB measured)?\)", outcome), outcome
    assert psutil.pid_exists(pid)
    row = instance.ps()["chat"]
    assert row["STATE"] == "ready"
    assert re.fullmatch(r"\d+ MB / 400 MB", row["MEMORY"]), row

    unloaded = instance.slm("unload", "chat")
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.splitlines() == ["unloading chat...", "chat: unloaded"]
    assert not _alive(pid)
    row = instance.ps()["chat"]
    assert (row["STATE"], row["MEMORY"], row["IDLE"]) == ("unloaded", "- / 400 MB", "-")


def test_load_refused_prints_the_servers_reason_and_fails(instance: Instance) -> None:
    instance.write_config(
        {
            "chat": instance.model("m-chat"),
            "huge": instance.model("m-huge", on_demand=True, memory_gb=5),
        },
        memory_budget_gb=1,
    )
    assert instance.start().returncode == 0

    too_big = instance.slm("load", "huge")
    assert too_big.returncode == 1
    assert too_big.stdout == "loading huge...\n"
    assert "5.0 GB" in too_big.stderr and "can never load" in too_big.stderr

    unknown = instance.slm("load", "coder")
    assert unknown.returncode == 1
    assert unknown.stdout == "loading coder...\n"
    assert "'coder'" in unknown.stderr and "chat, huge" in unknown.stderr


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ps_with_nothing_running_says_how_to_start_it(instance: Instance) -> None:
    instance.write_config({"chat": instance.model("m-chat")}, port=instance.port)
    result = instance.slm("ps")
    assert result.returncode == 1
    assert result.stderr == (
        f"no slm_server answers at {instance.url}; start it with ./start.sh or slm-server start\n"
    )
    assert result.stdout == ""
