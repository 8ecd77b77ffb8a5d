"""The fake backend's own switches, which the supervisor and router tests rely on."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from fake_backend_proc import FakeBackend
from net import wait_until

CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}


def test_loading_seconds_then_healthy() -> None:
    fake = FakeBackend().start(["--loading-seconds", "0.5"])
    try:
        assert httpx.get(f"{fake.url}/health").status_code == 503
        wait_until(lambda: httpx.get(f"{fake.url}/health").status_code == 200, 5, "loading end")
    finally:
        fake.stop()


def test_die_mid_stream_kills_the_process() -> None:
    fake = FakeBackend().start(["--die-mid-stream", "1"])
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{fake.url}/v1/chat/completions", json={**CHAT, "stream": True})
        assert fake.returncode(timeout=5) == 1
    finally:
        fake.stop()


def test_hang_never_answers() -> None:
    fake = FakeBackend().start(["--hang"])
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{fake.url}/v1/chat/completions", json=CHAT, timeout=0.3)
    finally:
        fake.stop()


def test_ignore_sigterm_needs_sigkill() -> None:
    fake = FakeBackend().start(["--ignore-sigterm"])
    try:
        os.kill(fake.pid, signal.SIGTERM)
        assert fake.returncode(timeout=0.5) is None  # still running
        assert httpx.get(f"{fake.url}/health").status_code == 200
    finally:
        fake.stop(grace=0.2)
    assert not fake.alive()


def test_no_responses_answers_404() -> None:
    fake = FakeBackend().start(["--no-responses"])
    try:
        response = httpx.post(f"{fake.url}/v1/responses", json={"model": "x", "input": "hi"})
        assert response.status_code == 404
    finally:
        fake.stop()
