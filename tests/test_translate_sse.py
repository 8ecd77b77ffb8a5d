"""SSE parsing must not depend on how the upstream's bytes were split."""

from __future__ import annotations

import json

import pytest

from slm_server.translate.sse import SseEvent, SseParser, sse_frame

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b'event: message_start\r\ndata: {"b": 2}\r\n\r\n'
    b"data: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent(None, '{"a": 1}'),
    SseEvent("message_start", '{"b": 2}'),
    SseEvent(None, "line one\nline two"),
    SseEvent(None, "[DONE]"),
]


@pytest.mark.parametrize("piece", [1, 2, 7, len(STREAM)])
def test_events_are_the_same_whatever_the_split(piece: int) -> None:
    parser = SseParser()
    events = []
    for start in range(0, len(STREAM), piece):
        events += parser.feed(STREAM[start : start + piece])
    assert events == EXPECTED


def test_incomplete_event_waits_for_its_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"a": 1}\n') == []
    assert parser.feed(b"\n") == [SseEvent(None, '{"a": 1}')]


def test_frame_round_trips_through_the_parser() -> None:
    frame = sse_frame("content_block_delta", {"text": "héllo\nworld"})
    assert frame.startswith(b"event: content_block_delta\ndata: ")
    [event] = SseParser().feed(frame)
    assert event.event == "content_block_delta"
    assert json.loads(event.data) == {"text": "héllo\nworld"}
    assert sse_frame(None, {"x": 1}) == b'data: {"x":1}\n\n'
