"""``ps``, ``load`` and ``unload`` against scripted instances: which instance is asked,
and what the user reads when it answers with an error, too slowly, or not at all."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from net import free_port
from slm_server.config import RouterSettings
from slm_server.control import instance_url, reload_report, run_load, run_ps, run_unload
from slm_server.supervisor.process import RestartPolicy

Answer = tuple[int, bytes]


class Scripted:
    """An HTTP server on a free loopback port answering each path as a test says, with
    ``headers`` on every answer; a path answered with ``HOLD`` gets no answer until the
    test ends. It records each request and its Authorization header."""

    HOLD: Answer = (0, b"")

    def __init__(self, answers: dict[str, Answer], headers: dict[str, str] | None = None) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.released = threading.Event()
        self.arrived = threading.Event()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                scripted.requests.append((self.command, self.path))
                scripted.authorizations.append(self.headers.get("Authorization"))
                scripted.arrived.set()
                status, body = scripted.answers.get(self.path, (404, b"{}"))
                if (status, body) == Scripted.HOLD:
                    scripted.released.wait(30)
                    return
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def envelope(message: str, code: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


HEALTH = {
    "chat": {
        "status": "healthy",
        "model_id": "gemma-3-270m",
        "state": "ready",
        "pid": 77,
        "memory_mb": 312,
        "memory_estimate_mb": 375,
        "in_flight": 0,
        "queued": 0,
        "last_used": None,
        "idle_ttl_s": None,
        "pinned": True,
    }
}


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A proxy in the environment that would swallow every request sent through it."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_ps_asks_the_instance_directly_whatever_proxy_the_environment_names(
    no_proxy_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with Scripted({"/v1/backends/health": (200, json.dumps(HEALTH).encode())}) as instance:
        assert run_ps(instance.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ROLE", "MODEL", "STATE"]
    assert lines[1].split()[:6] == ["chat", "gemma-3-270m", "ready", "312", "MB", "/"]
    assert instance.requests == [("GET", "/v1/backends/health")]


def test_nothing_answering_is_said_in_plain_words_with_what_to_do(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # given without its scheme, as people type it
    result = subprocess.run(
        [sys.executable, "-m", "slm_server", "ps", "--url", url.removeprefix("http://")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"no slm_server answers at {url}; start it with ./start.sh or slm-server start"
    )
    assert result.stdout == ""


def test_load_prints_the_outcome_once_the_model_is_ready(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ready = dict(HEALTH["chat"], pid=123, memory_mb=9100)
    with Scripted({"/v1/backends/chat/load": (200, json.dumps(ready).encode())}) as instance:
        assert run_load(instance.url, "chat", 5) == 0
    assert capsys.readouterr().out.splitlines() == [
        "loading chat...",
        "chat: ready (PID 123, 9.1 GB measured)",
    ]
    assert instance.requests == [("POST", "/v1/backends/chat/load")]


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (
            503,
            "insufficient_memory",
            "'coder' (m-coder): coder needs est. 0.8 GB, more than the memory budget of "
            "1.0 GB less 0.3 GB for pinned entries: it can never load",
        ),
        (503, "backend_unavailable", "'coder' (m-coder) could not be started: exited with 1"),
        (504, "backend_timeout", "'coder' (m-coder) was not ready within 300s"),
        (404, "role_not_found", "no enabled backend role 'coder'; roles: chat, embed"),
    ],
)
def test_load_refused_prints_the_servers_own_message_and_fails(
    capsys: pytest.CaptureFixture[str], status: int, code: str, message: str
) -> None:
    with Scripted({"/v1/backends/coder/load": (status, envelope(message, code))}) as instance:
        assert run_load(instance.url, "coder", 5) == 1
    out, err = capsys.readouterr()
    assert out == "loading coder...\n"
    assert err == f"{message}\n"


def test_unload_of_a_role_with_odd_characters_reaches_its_own_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gone = dict(HEALTH["chat"], state="unloaded", status="unloaded", pid=None, memory_mb=None)
    path = "/v1/backends/my%2Fchat%20v2/unload"
    with Scripted({path: (200, json.dumps(gone).encode())}) as instance:
        assert run_unload(instance.url, "my/chat v2", 5) == 0
    assert capsys.readouterr().out.splitlines() == [
        "unloading my/chat v2...",
        "my/chat v2: unloaded",
    ]
    assert instance.requests == [("POST", path)]


def test_load_that_outlasts_wait_returns_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Scripted({"/v1/backends/coder/load": Scripted.HOLD}) as instance:
        assert run_load(instance.url, "coder", 0.5) == 1
    assert capsys.readouterr().err == (
        f"no answer from {instance.url} within 0.5 s; see `slm-server ps` for what coder is doing\n"
    )


def test_ctrl_c_while_loading_ends_the_wait_and_says_where_to_look() -> None:
    with Scripted({"/v1/backends/coder/load": Scripted.HOLD}) as instance:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "slm_server", "load", "coder", "--url", instance.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert instance.arrived.wait(30), "load never asked the instance"
            waiting.send_signal(signal.SIGINT)
            out, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
    assert waiting.returncode == 130
    assert out == "loading coder...\n"
    assert err.strip() == "interrupted; see `slm-server ps` for what coder is doing"


def test_an_answer_that_is_not_slm_servers_is_said_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Scripted({"/v1/backends/health": (200, b"<html>router login</html>")}) as instance:
        assert run_ps(instance.url) == 1
        assert capsys.readouterr().err == f"{instance.url} did not answer like slm_server\n"
        instance.answers["/v1/backends/health"] = (502, b"Bad Gateway")
        assert run_ps(instance.url) == 1
        assert capsys.readouterr().err == "HTTP 502: Bad Gateway\n"


def test_without_a_running_instance_the_configured_port_on_this_machine_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_path = tmp_path / "run" / "slm_server.pid"
    assert instance_url(pid_path, RouterSettings(port=8123)) == "http://127.0.0.1:8123"
    assert instance_url(pid_path, RouterSettings(host="::1", port=9)) == "http://[::1]:9"
    # A record left by an instance that is gone is not trusted (and is cleared).
    pid_path.parent.mkdir()
    pid_path.write_text(json.dumps({"pid": _dead_pid(), "url": "http://127.0.0.1:1"}))
    assert instance_url(pid_path, RouterSettings(host="localhost")) == "http://localhost:8000"
    assert not pid_path.exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_listener_that_never_answers_is_given_up_on(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), reads nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert run_unload(url, "chat", 0.3) == 1
    assert capsys.readouterr().err == (
        f"no answer from {url} within 0.3 s; see `slm-server ps` for what chat is doing\n"
    )


@pytest.mark.parametrize("command", ["ps", "load"])
def test_the_api_key_goes_to_the_instance_asked_and_never_to_where_it_redirects(
    command: str,
) -> None:
    health = (200, json.dumps(HEALTH).encode())
    moved = (302, b"{}")
    with Scripted({"/v1/backends/health": health}) as elsewhere:
        location = {"location": f"{elsewhere.url}/v1/backends/health"}
        paths = {"/v1/backends/health": moved, "/v1/backends/chat/load": moved}
        with Scripted(paths, location) as instance:
            if command == "ps":
                run_ps(instance.url, "sk-local-secret")
            else:
                run_load(instance.url, "chat", 5, "sk-local-secret")
    assert instance.authorizations == ["Bearer sk-local-secret"]
    assert elsewhere.authorizations == [None]  # the redirect was followed, without the key


def test_reload_waits_as_long_as_the_configs_grace_may_make_the_reload_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from slm_server import cli, control

    asked: list[float] = []
    warning = "warning: models.yaml: field 'response_store_ttl_s': applies with ..."

    def answered(method: str, url: str, path: str, timeout_s: float, api_key: str | None) -> Any:
        asked.append(timeout_s)
        return {"roles": {"a": "unchanged"}, "router": {}, "warnings": [warning]}

    monkeypatch.setattr(control, "_call", answered)
    monkeypatch.delenv("SLM_API_KEY", raising=False)
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": {}, "router": {"shutdown_grace_s": 900}}))
    assert cli.main(["reload", "--config", str(config)]) == 0
    # The drain of a removed model (900 s) and its stop grace: never cut short before.
    assert asked[0] >= 900 + RestartPolicy().stop_grace_s
    assert capsys.readouterr().out.splitlines() == ["a: unchanged", warning]

    assert cli.main(["reload", "--url", "127.0.0.1:9"]) == 0  # no config read: the default
    assert asked[1] == control.RELOAD_TIMEOUT_S


def test_the_reload_report_says_what_became_of_each_model_started_anew() -> None:
    answer = {
        "roles": {"a": "unchanged", "b": "added", "c": "replaced", "d": "removed"},
        "launch": {"b": "starting", "c": "deferred: max_loaded_models is 1, all taken"},
        "router": {"changed": ["max_loaded_models"], "restart_needed": []},
    }
    assert reload_report(answer).splitlines() == [
        "a: unchanged",
        "b: added (starting)",
        "c: replaced (deferred: max_loaded_models is 1, all taken)",
        "d: removed",
        "router settings applied: max_loaded_models",
    ]
