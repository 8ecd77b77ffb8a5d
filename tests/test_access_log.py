"""The access log: one line per request once it has ended, on its own logger, its fields
in a fixed order, as text or as JSON. The router under uvicorn in this process, a real
client, and the fake backend as a subprocess."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from config_builder import entry, make_config
from fake_backend_proc import FakeBackend
from net import eventually
from router_served import served
from slm_server.log_format import JsonFormatter
from slm_server.router.access_log import ACCESS_LOGGER
from slm_server.router.app import RouterApp

CHAT = {"model": "m-chat", "messages": [{"role": "user", "content": "hi"}]}

# req=ID key=K METHOD PATH model=M STATUS BYTES DURATION ttfb= queue= tokens= SERVED
LINE = re.compile(
    r"req=(?P<id>\S+) key=(?P<key>\S+) (?P<method>[A-Z]+) (?P<path>\S+) model=(?P<model>\S+) "
    r"(?P<status>\d{3}|-) (?P<bytes>\d+)B (?P<duration>\d+\.\d)ms "
    r"ttfb=(?P<ttfb>\d+\.\dms|-) queue=(?P<queue>\d+\.\dms|-) "
    r"tokens=(?P<tokens>\d+/\d+|-) (?P<served>native|converted|-)"
    r"(?: upstream=(?P<upstream>\S+))?(?: attempts=(?P<attempts>\d+))?"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    with FakeBackend() as backend:
        yield backend


class AccessLines:
    """The access log's records as the router writes them."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        self._caplog = caplog

    def records(self) -> list[logging.LogRecord]:
        return [r for r in self._caplog.records if r.name == ACCESS_LOGGER]

    async def next(self, count: int = 1) -> list[logging.LogRecord]:
        """The lines, once ``count`` are written (a line follows its answer's last byte)."""
        await eventually(lambda: len(self.records()) >= count, 5, f"{count} access line(s)")
        return self.records()

    async def one(self) -> dict[str, str]:
        (record,) = await self.next()
        match = LINE.fullmatch(record.getMessage())
        assert match is not None, record.getMessage()
        return match.groupdict()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> AccessLines:
    return AccessLines(caplog)


@asynccontextmanager
async def router_for(port: int, **router: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = RouterApp(make_config({"chat": entry("m-chat", port)}, **router))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def test_a_chat_completion_is_one_line_with_its_figures(
    fake: FakeBackend, lines: AccessLines
) -> None:
    async with router_for(fake.port) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-1"}
        )
        assert response.status_code == 200, response.text
        line = await lines.one()
    usage = response.json()["usage"]
    assert line["id"] == "trace-1"
    assert (line["key"], line["method"], line["path"]) == ("-", "POST", "/v1/chat/completions")
    assert (line["model"], line["status"], line["served"]) == ("m-chat", "200", "native")
    assert line["upstream"] == "chat/0"
    assert not line["attempts"]  # one upstream, one try
    assert int(line["bytes"]) == len(response.content)
    assert line["tokens"] == f"{usage['prompt_tokens']}/{usage['completion_tokens']}"
    assert line["queue"] == "0.0ms"
    assert line["ttfb"] != "-"


async def test_a_stream_has_its_time_to_first_byte_and_its_last_chunks_usage(
    fake: FakeBackend, lines: AccessLines
) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with router_for(fake.port) as client:
        async with client.stream("POST", "/v1/chat/completions", json=request) as response:
            body = await response.aread()
        assert response.status_code == 200
        line = await lines.one()
    last = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e.startswith("data: {")][-1]
    usage = last["usage"]
    assert line["tokens"] == f"{usage['prompt_tokens']}/{usage['completion_tokens']}"
    assert int(line["bytes"]) == len(body)
    ttfb = float(line["ttfb"].removesuffix("ms"))
    assert 0 < ttfb <= float(line["duration"]) + 0.1


async def test_an_unknown_model_is_logged_with_its_404_and_no_model(
    fake: FakeBackend, lines: AccessLines
) -> None:
    async with router_for(fake.port) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert response.status_code == 404
        line = await lines.one()
    assert (line["model"], line["status"], line["tokens"], line["served"]) == ("-", "404", "-", "-")
    assert line["id"] == response.headers["x-request-id"]


async def test_a_converted_answer_says_converted_and_a_native_one_native(
    fake: FakeBackend, lines: AccessLines
) -> None:
    messages = {
        "model": "m-chat",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with router_for(fake.port) as client:
        native = await client.post("/v1/responses", json={"model": "m-chat", "input": "hi"})
        converted = await client.post("/v1/messages", json=messages)
        assert (native.status_code, converted.status_code) == (200, 200), converted.text
        records = await lines.next(2)
    assert "x-slm-converted-from" in converted.headers
    served = [LINE.fullmatch(r.getMessage()).group("served") for r in records]  # type: ignore[union-attr]
    assert served == ["native", "converted"]


async def test_other_endpoints_are_logged_but_not_health(
    fake: FakeBackend, lines: AccessLines
) -> None:
    async with router_for(fake.port) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
        line = await lines.one()
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/models", "200")
    assert len(lines.records()) == 1


async def test_a_path_with_a_newline_cannot_forge_a_line(
    fake: FakeBackend, lines: AccessLines
) -> None:
    async with router_for(fake.port) as client:
        response = await client.get("/nothing%0Areq=forged 200")
        assert response.status_code == 404
        (record,) = await lines.next()
    message = record.getMessage()
    assert "\n" not in message
    assert '"/nothing\\nreq=forged 200"' in message


async def test_access_log_false_writes_no_line(fake: FakeBackend, lines: AccessLines) -> None:
    async with router_for(fake.port, access_log=False) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200  # then a line would be out
    assert lines.records() == []


async def test_json_lines_give_the_fields_as_numbers(fake: FakeBackend, lines: AccessLines) -> None:
    async with router_for(fake.port) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        (record,) = await lines.next()
    fields = json.loads(JsonFormatter().format(record))
    usage = response.json()["usage"]
    assert fields["logger"] == ACCESS_LOGGER
    assert fields["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])
    assert fields["request_id"] == response.headers["x-request-id"]
    assert fields["message"] == record.getMessage()
    expected = {
        "key": "-",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m-chat",
        "status": 200,
        "bytes_out": len(response.content),
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "served": "native",
        "upstream": "chat/0",
        "queue_ms": 0.0,
    }
    assert {name: fields[name] for name in expected} == expected
    assert 0 < fields["first_byte_ms"] <= fields["duration_ms"]


async def test_a_requests_key_is_named_never_given(fake: FakeBackend, lines: AccessLines) -> None:
    keys = [{"name": "alice", "key": "sk-alice-secret"}]
    async with router_for(fake.port, api_keys=keys) as client:
        ok = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-alice-secret"}
        )
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert (ok.status_code, refused.status_code) == (200, 401)
        records = await lines.next(2)
    found = [LINE.fullmatch(r.getMessage()) for r in records]
    assert [(m["key"], m["status"]) for m in found if m] == [("alice", "200"), ("-", "401")]
    assert not any("sk-alice-secret" in r.getMessage() for r in records)
