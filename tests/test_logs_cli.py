"""``slm-server logs`` and ``restart`` as a user runs them, against a real ``serve`` (a fake
llama-server on its PATH, writing a line per request), and what a shutdown does to a
follower."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
GRACE_S = 30  # a follower must not hold the shutdown for it


def serve(tmp_path: Path) -> RouterProcess:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # never read: the fake ignores --model
    port = free_port()
    config = {
        "models": {"chat": entry("m-chat", port, model_path=str(tmp_path / "m.gguf"))},
        "router": {"shutdown_grace_s": GRACE_S},
    }
    bin_dir = fake_llama_server.install(tmp_path / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(tmp_path / "cache"),  # its check result stays out of ours
        fake_llama_server.ARGS_ENV: "--log-requests",
    }
    router = RouterProcess(
        config, tmp_path, command="serve", env=env, args=["--log-format", "json"]
    ).start()
    router.wait_backends_ready(30)
    return router


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    process = serve(tmp_path_factory.mktemp("logs"))
    try:
        yield process
    finally:
        process.stop()


def slm(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slm_server", *args, "--url", router.url],
        cwd=router.tmp_dir,
        env=router.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def say(router: RouterProcess, *lines: str) -> None:
    port = router.backends()["chat"]["port"]
    response = httpx.post(
        f"http://127.0.0.1:{port}/_fake/say", json={"lines": list(lines)}, timeout=5
    )
    assert response.status_code == 200


def test_logs_prints_the_last_lines_of_a_models_log(router: RouterProcess) -> None:
    say(router, *(f"line {n}" for n in range(20)))
    wait_until(
        lambda: httpx.get(f"{router.url}/admin/logs/chat?tail=1").text == "line 19\n",
        5,
        "the lines in the log",
    )
    printed = slm(router, "logs", "chat", "-n", "3")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == "line 17\nline 18\nline 19\n"
    missing = slm(router, "logs", "nope")
    assert missing.returncode == 1
    assert "no enabled backend role 'nope'; roles: chat" in missing.stderr


def test_logs_of_the_router_are_its_own_lines_in_its_format(router: RouterProcess) -> None:
    printed = slm(router, "logs", "router", "-n", "1000")
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines()]  # --log-format json
    config = router.tmp_dir / "models.yaml"
    assert f"config {config}: routing 1 model(s)" in [line["message"] for line in lines]


def test_restart_gives_the_model_a_new_process_that_answers(router: RouterProcess) -> None:
    before = router.backends()["chat"]["pid"]
    restarted = slm(router, "restart", "chat")
    assert restarted.returncode == 0, restarted.stderr
    after = router.backends()["chat"]["pid"]
    assert restarted.stdout.startswith(f"restarting chat...\nchat: ready (PID {after},")
    assert after != before
    answered = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert answered.status_code == 200, answered.text
    missing = slm(router, "restart", "nope")
    assert missing.returncode == 1 and "no enabled backend role 'nope'" in missing.stderr


def test_a_follower_sees_new_lines_and_ends_at_once_when_the_server_stops(
    tmp_path: Path,
) -> None:
    router = serve(tmp_path)
    assert httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=10).is_success
    follower = subprocess.Popen(
        [sys.executable, "-m", "slm_server", "logs", "chat", "-f", "-n", "1", "--url", router.url],
        env=router.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with ThreadPoolExecutor(1) as reader:
            assert follower.stdout is not None
            read = follower.stdout.readline
            # The tail, once the follower is in: the request just made.
            assert reader.submit(read).result(10).endswith("POST /v1/chat/completions\n")
            completion = {"model": "m-chat", "prompt": "hi"}
            response = httpx.post(f"{router.url}/v1/completions", json=completion, timeout=10)
            assert response.status_code == 200, response.text
            assert reader.submit(read).result(10).endswith("POST /v1/completions\n")
        began = time.monotonic()
        os.kill(router.pid, signal.SIGTERM)
        rest, errors = follower.communicate(timeout=10)
        assert follower.returncode == 0, errors
        assert rest.endswith("=== slm_server: the server is stopping; this log ends here\n")
        assert router.wait(10) == 0
        assert time.monotonic() - began < 5  # not the shutdown grace of 30 s
    finally:
        follower.kill()
        follower.wait()
        router.stop()


def test_a_follower_that_never_reads_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    router = serve(tmp_path)
    sleeper = socket.socket()
    try:
        host, port = router.url.removeprefix("http://").split(":")
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.settimeout(10)
        sleeper.connect((host, int(port)))
        sleeper.sendall(
            f"GET /admin/logs/chat?follow=1&tail=0 HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
        )
        assert sleeper.recv(4096).startswith(b"HTTP/1.1 200 ")  # it follows from here on
        # 12 MB: more than every buffer between the router and this reader can hold.
        filler = "x" * 4000
        for batch in range(10):
            say(router, *(f"flood {batch}.{n} {filler}" for n in range(300)))
        say(router, "last of the flood")
        wait_until(
            lambda: httpx.get(f"{router.url}/admin/logs/chat?tail=1").text == "last of the flood\n",
            10,
            "the flood read by the router",
        )
        began = time.monotonic()
        os.kill(router.pid, signal.SIGTERM)
        assert router.wait(GRACE_S + 10) == 0
        # Cut off once it has taken nothing for a second: not the grace of 30 s.
        assert time.monotonic() - began < 5
        log = router.log()
        assert "closing a connection whose client stopped reading" in log
        assert "ASGI callable returned without completing response" not in log
    finally:
        sleeper.close()
        router.stop()


def test_on_a_terminal_control_characters_are_shown_not_acted_on(router: RouterProcess) -> None:
    # What a client can make a backend log: a screen clear and a new window title.
    line = "prompt: \x1b[2J\x1b]0;owned\x07 and\ta tab"
    say(router, line)
    wait_until(
        lambda: httpx.get(f"{router.url}/admin/logs/chat?tail=1").text == line + "\n",
        5,
        "the line in the log",
    )
    # Into a pipe or a file: the line as the backend wrote it.
    piped = slm(router, "logs", "chat", "-n", "1")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == line + "\n"
    # On a terminal: nothing the terminal would act on.
    terminal, child_end = pty.openpty()
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "slm_server", "logs", "chat", "-n", "1", "--url", router.url],
            env=router.env,
            stdout=child_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(child_end)
    received = bytearray()
    try:
        while chunk := os.read(terminal, 4096):
            received += chunk
    except OSError:  # EIO: the terminal's other end is closed and all of it was read
        pass
    finally:
        os.close(terminal)
    assert shown.returncode == 0, shown.stderr
    assert received.decode() == "prompt: \ufffd[2J\ufffd]0;owned\ufffd and\ta tab\r\n"
