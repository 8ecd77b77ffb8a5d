"""Log lines as text or as JSON (``--log-format``): the formatters on their own, and a
real ``slm-server router --log-format json`` whose every line is one JSON object."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from net import wait_until
from router_proc import RouterProcess
from slm_server.log_format import JsonFormatter, TextFormatter, UtcTime

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def make_record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("broken\non two lines")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("slm_server.x", logging.WARNING, "", 0, message, args, exc_info)


def test_times_are_utc_to_the_millisecond() -> None:
    at = UtcTime()
    assert at(0.0) == "1970-01-01T00:00:00.000Z"
    assert at(1796187662.1239) == "2026-12-02T05:01:02.123Z"
    assert at(1796187662.9) == "2026-12-02T05:01:02.900Z"  # the same second, formatted once
    assert at(1796187663.0) == "2026-12-02T05:01:03.000Z"


def test_a_text_line_has_time_level_logger_and_message() -> None:
    line = TextFormatter().format(make_record("%d model(s)", 2))
    assert re.fullmatch(ISO_UTC + r" WARNING slm_server\.x: 2 model\(s\)", line)


def test_a_json_line_is_one_object_with_its_traceback_inside() -> None:
    line = JsonFormatter().format(make_record("failed: %s", "ünïcode", exc=True))
    assert "\n" not in line
    fields = json.loads(line)
    assert re.fullmatch(ISO_UTC, fields["time"])
    assert (fields["level"], fields["logger"]) == ("WARNING", "slm_server.x")
    assert fields["message"] == "failed: ünïcode"
    assert "ValueError: broken\non two lines" in fields["exception"]


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


def test_a_router_with_log_format_json_writes_only_json_lines(
    fake: FakeBackend, tmp_path: Path
) -> None:
    config = {"models": {"chat": entry("m-chat", fake.port)}}
    router = RouterProcess(config, tmp_path, args=["--log-format", "json"]).start()
    try:
        chat = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(
            f"{router.url}/v1/chat/completions",
            json=chat,
            headers={"x-request-id": "json-1"},
            timeout=10,
        )
        assert response.status_code == 200, response.text

        def access_lines() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in router.log().splitlines() if line]
            return [line for line in lines if line["logger"] == "slm_server.access"]

        wait_until(lambda: bool(access_lines()), 5, f"the access line in {router.log_path}")
    finally:
        router.stop()
    lines = [json.loads(line) for line in router.log().splitlines() if line]
    loggers = {line["logger"] for line in lines}
    assert {"slm_server.router.serve", "uvicorn.error", "slm_server.access"} <= loggers
    (access,) = access_lines()
    assert access["request_id"] == "json-1"
    assert (access["path"], access["status"], access["model"]) == (
        "/v1/chat/completions",
        200,
        "m-chat",
    )
    assert access["completion_tokens"] == response.json()["usage"]["completion_tokens"]
