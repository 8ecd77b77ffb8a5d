"""``start`` / ``stop``: one background instance per directory, judged by PID and port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from config_builder import entry
from net import free_port


def slm(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slm_server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> Iterator[Path]:
    """A config whose one model file is not a real GGUF, so its backend fails fast."""
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    models = {"chat": entry("m-broken", free_port(), model_path="broken.gguf")}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    yield tmp_path
    slm("stop", "--config", "models.yaml", cwd=tmp_path)  # whatever a test left running


def test_port_held_by_a_foreign_listener_is_refused(config_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = slm("start", "--config", "models.yaml", "--port", str(port), cwd=config_dir)
    assert result.returncode == 1
    assert f"port {port} is already in use by PID " in result.stdout
    assert not (config_dir / "run" / "slm_server.pid").exists()


def test_failed_model_is_reported_then_second_start_refused_then_stopped(
    config_dir: Path,
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = config_dir / "run" / "slm_server.pid"
    pid_file.parent.mkdir()
    pid_file.write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:1"}))

    port = str(free_port())
    first = slm("start", "--config", "models.yaml", "--port", port, cwd=config_dir)
    assert f"removing stale {pid_file}" in first.stdout
    assert "chat (m-broken): FAILED: " in first.stdout, first.stdout
    assert "0 of 1 model(s) ready" in first.stdout
    assert first.returncode == 1
    # The router keeps serving (and reporting) the failure.
    pid = json.loads(pid_file.read_text())["pid"]
    assert psutil.pid_exists(pid)

    second = slm("start", "--config", "models.yaml", "--port", port, cwd=config_dir)
    assert second.returncode == 1
    assert f"already running (PID {pid}" in second.stdout

    stopped = slm("stop", "--config", "models.yaml", cwd=config_dir)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()
    assert "not running" in slm("stop", "--config", "models.yaml", cwd=config_dir).stdout
