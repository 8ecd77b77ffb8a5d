"""API keys at the command line: hash-key, check-config, start-up refusals, and ``start`` /
``ps`` against an instance with keys (real ``serve``, fake llama-servers on its PATH)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import fake_llama_server
from config_builder import entry
from net import free_port
from router_proc import RouterProcess

OPS_KEY = "ops-4f0c2b7e9d1a"


class Directory:
    """A directory with a model file, a fake llama-server, and ``slm`` to run the CLI there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        (path / "m.gguf").write_bytes(b"GGUF")  # never read: the fake ignores --model
        bin_dir = fake_llama_server.install(path / "bin")
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("SLM_SERVER_CONFIG", "SLM_API_KEY")
        } | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLM_SERVER_CACHE": str(path / "cache"),
        }

    def write_config(self, api_keys: list[dict[str, Any]]) -> None:
        model = entry("m-chat", free_port(), model_path=str(self.path / "m.gguf"))
        config = {"models": {"chat": model}, "router": {"api_keys": api_keys}}
        (self.path / "models.yaml").write_text(yaml.safe_dump(config))

    def slm(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slm_server", *args],
            cwd=self.path,
            env=self.env | (env or {}),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Directory]:
    made = Directory(tmp_path)
    yield made
    if (tmp_path / "models.yaml").exists():
        made.slm("stop", "--config", "models.yaml")


@pytest.mark.parametrize("line_end", ["\n", "\r\n", ""])
def test_hash_key_prints_the_sha256_of_the_key_on_stdin(
    directory: Directory, line_end: str
) -> None:
    result = directory.slm("hash-key", stdin=f"s3cret key{line_end}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hashlib.sha256(b"s3cret key").hexdigest() + "\n"


def test_hash_key_refuses_an_empty_key(directory: Directory) -> None:
    result = directory.slm("hash-key", stdin="\n")
    assert result.returncode == 1 and result.stdout == ""
    assert "no key on stdin" in result.stderr


def test_check_config_says_what_is_wrong_with_the_keys(directory: Directory) -> None:
    directory.write_config(
        [
            {"name": "alice", "key_env": "SLM_TEST_KEY_ALICE", "models": ["m-chat", "m-typo"]},
            {"name": "lab", "key": "written-here"},
        ]
    )
    unset = directory.slm("check-config", "--config", "models.yaml")
    assert unset.returncode == 1
    assert "error: models.yaml: field 'router.api_keys.0.key_env': key 'alice': " in unset.stdout
    assert "the environment variable named by key_env is not set" in unset.stdout
    assert "SLM_TEST_KEY_ALICE" not in unset.stdout  # it could be a key pasted there
    assert "'m-typo', which no enabled entry serves" in unset.stdout
    assert "key 'lab' is written in the file itself" in unset.stdout

    ok = directory.slm("check-config", "--config", "models.yaml", env={"SLM_TEST_KEY_ALICE": "a"})
    assert ok.returncode == 0, ok.stdout
    assert "0 error(s), 2 warning(s)" in ok.stdout  # the key written in the file, the typo

    spaced = directory.slm(
        "check-config", "--config", "models.yaml", env={"SLM_TEST_KEY_ALICE": "alice-key\n"}
    )
    assert spaced.returncode == 1
    assert "starts or ends with whitespace" in spaced.stdout and "alice-key" not in spaced.stdout


def test_check_config_names_a_malformed_sha256(directory: Directory) -> None:
    directory.write_config([{"name": "ops", "key_sha256": "not-hex"}])
    result = directory.slm("check-config", "--config", "models.yaml")
    assert result.returncode == 1
    assert "field 'router.api_keys.0.key_sha256': must be 64 hex digits" in result.stderr


@pytest.mark.parametrize("command", ["router", "serve"])
def test_a_router_whose_key_variable_is_unset_does_not_start(
    directory: Directory, command: str
) -> None:
    directory.write_config([{"name": "alice", "key_env": "SLM_TEST_KEY_ALICE"}])
    args = ["--config", "models.yaml", "--host", "127.0.0.1", "--port", str(directory.port)]
    result = directory.slm(command, *args)
    assert result.returncode == 1
    assert "key 'alice': the environment variable named by key_env is not set" in result.stderr
    assert "1 error(s) in router.api_keys; nothing started" in result.stderr


@pytest.mark.parametrize("keys", [True, False])
def test_a_router_with_keys_warns_of_a_backend_reachable_around_them(
    tmp_path: Path, keys: bool
) -> None:
    models = {
        "open": entry("m-open", free_port(), host="0.0.0.0"),
        "local": entry("m-local", free_port(), host="127.0.0.1"),
    }
    api_keys = [{"name": "alice", "key_env": "SLM_TEST_KEY_ALICE"}] if keys else []
    config = {"models": models, "router": {"api_keys": api_keys}}
    router = RouterProcess(config, tmp_path, env={"SLM_TEST_KEY_ALICE": OPS_KEY})
    try:
        log = router.start().log()
    finally:
        router.stop()
    warned = [line for line in log.splitlines() if "reachable from other machines" in line]
    if keys:
        assert len(warned) == 1 and "open: the backend listens on 0.0.0.0:" in warned[0]
        assert "around the router's API keys" in warned[0]
    else:  # the router itself asks for nothing then: no way around it to warn of
        assert warned == []


def test_start_follows_the_models_with_an_admin_key_of_the_config(directory: Directory) -> None:
    directory.write_config(
        [
            {"name": "user", "key_env": "SLM_TEST_KEY_USER", "models": []},
            {"name": "ops", "key_env": "SLM_TEST_KEY_OPS", "admin": True},
        ]
    )
    keys = {"SLM_TEST_KEY_USER": "user-9b3e", "SLM_TEST_KEY_OPS": OPS_KEY}
    port = ["--port", str(directory.port)]
    started = directory.slm("start", "--config", "models.yaml", *port, "--wait", "60", env=keys)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "chat" in started.stdout and "ready" in started.stdout

    # ps finds the instance and the key the same way.
    listed = directory.slm("ps", "--config", "models.yaml", env=keys)
    assert listed.returncode == 0, listed.stderr
    assert "m-chat" in listed.stdout


def test_start_without_a_key_it_can_send_says_how_to_give_one(directory: Directory) -> None:
    hashed = hashlib.sha256(OPS_KEY.encode()).hexdigest()
    directory.write_config([{"name": "ops", "key_sha256": hashed, "admin": True}])
    port = ["--port", str(directory.port)]
    started = directory.slm("start", "--config", "models.yaml", *port, "--wait", "60")
    assert started.returncode == 1
    assert "slm_server is running, but it asks for an API key" in started.stdout
    assert "--api-key-file or $SLM_API_KEY" in started.stdout

    listed = directory.slm("ps", "--config", "models.yaml", env={"SLM_API_KEY": OPS_KEY})
    assert listed.returncode == 0, listed.stderr
    assert "m-chat" in listed.stdout

    # From a file: the key never shows among the command's arguments.
    (directory.path / "ops.key").write_text(f"{OPS_KEY}\r\n")
    from_file = directory.slm("ps", "--config", "models.yaml", "--api-key-file", "ops.key")
    assert from_file.returncode == 0, from_file.stderr
    assert "m-chat" in from_file.stdout
    unloaded = directory.slm(
        "unload", "chat", "--config", "models.yaml", "--api-key-file", "ops.key"
    )
    assert unloaded.returncode == 0, unloaded.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read ops.key: No such file"), ("\n", "ops.key holds no key on its first line")],
)
def test_a_key_file_that_holds_no_key_is_said_so_before_asking(
    directory: Directory, content: str | None, says: str
) -> None:
    if content is not None:
        (directory.path / "ops.key").write_text(content)
    result = directory.slm("ps", "--url", "127.0.0.1:1", "--api-key-file", "ops.key")
    assert result.returncode == 2
    assert f"argument --api-key-file: {says}" in result.stderr
    assert directory.slm("ps", "--api-key", OPS_KEY).returncode == 2  # no key on the line
