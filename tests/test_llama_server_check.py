"""The check every llama-server passes before it is used, against stand-in binaries.

Each stand-in is a small script named ``llama-server``: one that dies with SIGILL while
loading (as a build for the wrong CPU does), one that never answers, and one that serves
a token. The real binary's own check is in ``test_llama_server_build.py``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import yaml

from slm_server.backends import BackendUnsupported, llamacpp
from slm_server.config import ModelEntry
from slm_server.llama_server.cache import CACHE_ENV, Layout
from slm_server.llama_server.check import binary_digest, check_model, ensure_checked, run_check
from slm_server.llama_server.locate import LlamaServerUnusable, usable_llama_server

RUNS_ENV = "STAND_IN_RUNS"  # a file each stand-in run appends a line to

DIES_WITH_SIGILL = """
import os, signal
open(os.environ["STAND_IN_RUNS"], "a").write("run\\n")
print("load_tensors: CPU_Mapped model buffer size = 241.41 MiB", flush=True)
print("llama threadpool init, n_threads = 2", flush=True)
os.kill(os.getpid(), signal.SIGILL)
"""

KILLED_OUTRIGHT = """
import os, signal
open(os.environ["STAND_IN_RUNS"], "a").write("run\\n")
os.kill(os.getpid(), signal.SIGKILL)
"""

NEVER_ANSWERS = """
import os, time
open(os.environ["STAND_IN_RUNS"], "a").write("run\\n")
time.sleep(60)
"""

# Just enough of llama-server's HTTP API for the check: /health, then one token.
SERVES_A_TOKEN = """
import http.server, json, os, sys
open(os.environ["STAND_IN_RUNS"], "a").write("run\\n")
port = int(sys.argv[sys.argv.index("--port") + 1])

class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer({"status": "ok"})

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self._answer({"content": " Paris", "tokens_predicted": 1})

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def stand_in(directory: Path, script: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "llama-server"
    binary.write_text(f"#!{sys.executable}\n{script}")
    binary.chmod(0o755)
    return binary


def install_as_built(layout: Layout, script: str) -> Path:
    """Put a stand-in where ``build-llama-server`` installs, and mark it current."""
    binary = stand_in(layout.build_dir("linux-x86_64-standin"), script)
    layout.current.write_text("linux-x86_64-standin\n")
    return binary


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    counter = tmp_path / "runs"
    counter.touch()
    monkeypatch.setenv(RUNS_ENV, str(counter))
    return counter


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Layout]:
    """A cache of its own, and a PATH with no llama-server on it."""
    if check_model() is None:
        pytest.fail("the packaged test model is missing: run scripts/sync")
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    yield Layout(cache)


def times_run(counter: Path) -> int:
    return len(counter.read_text().splitlines())


def test_a_binary_that_dies_with_sigill_is_refused_with_the_reason(
    layout: Layout, runs: Path
) -> None:
    install_as_built(layout, DIES_WITH_SIGILL)
    with pytest.raises(LlamaServerUnusable) as refused:
        usable_llama_server(layout)
    message = str(refused.value)
    assert "failed its check (killed by SIGILL (illegal instruction: llama-server was built " in (
        message
    )
    assert "llama threadpool init" in message  # its own last words
    assert "slm-server build-llama-server --rebuild" in message  # what to do
    # Kept: the next start refuses it without running it again.
    with pytest.raises(LlamaServerUnusable):
        usable_llama_server(layout)
    assert times_run(runs) == 1


def test_the_backend_refuses_to_start_a_binary_that_failed(layout: Layout, runs: Path) -> None:
    install_as_built(layout, DIES_WITH_SIGILL)
    entry = ModelEntry.model_validate(llamacpp_fields())
    with pytest.raises(BackendUnsupported) as refused:
        llamacpp.launch_spec(entry, Path("."))
    assert "killed by SIGILL" in str(refused.value)


def test_check_config_reports_a_binary_that_failed(
    layout: Layout, runs: Path, tmp_path: Path
) -> None:
    install_as_built(layout, DIES_WITH_SIGILL)
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": {"chat": llamacpp_fields()}}))
    result = subprocess.run(
        [sys.executable, "-m", "slm_server", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: " in result.stdout and "llama-server (for models chat):" in result.stdout
    assert "killed by SIGILL (illegal instruction" in result.stdout
    assert "1 error(s)" in result.stdout


def test_a_binary_that_never_answers_fails_but_is_checked_again(
    layout: Layout, runs: Path, tmp_path: Path
) -> None:
    binary = stand_in(tmp_path / "bin", NEVER_ANSWERS)
    model = check_model()
    assert model is not None
    verdict = run_check(binary, model, timeout_s=1)
    assert not verdict.ok and "not serving after 1s" in verdict.detail
    assert not verdict.keep  # a busy machine, not the binary's fault: tried again next time


def test_a_binary_killed_by_another_signal_is_checked_again(layout: Layout, runs: Path) -> None:
    """SIGKILL (the out-of-memory killer, a user) says nothing about the CPU: not kept."""
    install_as_built(layout, KILLED_OUTRIGHT)
    for _ in range(2):
        with pytest.raises(LlamaServerUnusable, match="killed by SIGKILL"):
            usable_llama_server(layout)
    assert times_run(runs) == 2


def test_a_working_binary_passes_once_and_is_not_run_again(layout: Layout, runs: Path) -> None:
    binary = install_as_built(layout, SERVES_A_TOKEN)
    assert usable_llama_server(layout) == binary
    assert usable_llama_server(layout) == binary
    assert times_run(runs) == 1
    verdict = ensure_checked(binary, layout)
    assert verdict is not None and verdict.ok
    assert "generated a token" in verdict.detail


def test_a_failing_binary_on_path_gives_way_to_the_built_one(
    layout: Layout,
    runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_path = stand_in(tmp_path / "path-bin", DIES_WITH_SIGILL)
    monkeypatch.setenv("PATH", str(on_path.parent))
    built = install_as_built(layout, SERVES_A_TOKEN)
    with caplog.at_level(logging.WARNING):
        assert usable_llama_server(layout) == built
    assert f"not using {on_path}: failed its check (killed by SIGILL" in caplog.text


def test_a_binary_changed_in_place_is_checked_again(layout: Layout, runs: Path) -> None:
    binary = install_as_built(layout, SERVES_A_TOKEN)
    assert usable_llama_server(layout) == binary
    binary.write_text(f"#!{sys.executable}\n{DIES_WITH_SIGILL}")  # a rebuild, say
    with pytest.raises(LlamaServerUnusable):
        usable_llama_server(layout)
    assert times_run(runs) == 2


def test_no_binary_at_all_is_none(layout: Layout) -> None:
    assert usable_llama_server(layout) is None


def llamacpp_fields() -> dict[str, object]:
    model = check_model()
    assert model is not None
    return {
        "id": "gemma",
        "backend": "llamacpp",
        "port": 18501,
        "host": "127.0.0.1",
        "model_path": str(model),
        "default_timeout": 30,
        "quantization": "Q4_K_M",
    }


def test_a_binary_is_read_once_while_it_stays_the_same(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_bytes(b"first build")
    first = binary_digest(binary)
    with mock.patch("slm_server.llama_server.check.sha256_of") as reading:
        assert binary_digest(binary) == first
        reading.assert_not_called()
    replaced = tmp_path / "llama-server.new"
    replaced.write_bytes(b"second build")
    replaced.replace(binary)  # as a rebuild or an upgrade installs it
    assert binary_digest(binary) != first
