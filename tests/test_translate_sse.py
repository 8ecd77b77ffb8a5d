"""SSE parsing must not depend on how the upstream's bytes were split."""

from __future__ import annotations

import json

import pytest

from slm_server.translate.sse import MAX_EVENT_BYTES, SseEvent, SseParser, SseTooLarge, sse_frame

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


def test_a_line_that_never_ends_is_refused_at_the_limit() -> None:
    parser = SseParser(max_event_bytes=1000)
    assert parser.feed(b'data: {"a": 1}\n\n') == [SseEvent(None, '{"a": 1}')]
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(SseTooLarge, match="1000 bytes"):
        parser.feed(b"x" * 200)


def test_an_event_of_many_lines_is_refused_at_the_limit() -> None:
    parser = SseParser(max_event_bytes=1000)
    with pytest.raises(SseTooLarge):
        for _ in range(100):
            parser.feed(b"data: " + b"x" * 50 + b"\n")  # no blank line: one event, growing


def test_events_up_to_the_limit_pass_in_any_split() -> None:
    text = "y" * 900
    stream = (f"data: {text}\n\n" * 3).encode()
    for piece in (1, 64, len(stream)):
        parser = SseParser(max_event_bytes=1000)
        events = []
        for start in range(0, len(stream), piece):
            events += parser.feed(stream[start : start + piece])
        assert events == [SseEvent(None, text)] * 3


def test_the_default_limit_is_stated() -> None:
    assert MAX_EVENT_BYTES == 8 * 1024 * 1024


def test_a_lone_surrogate_is_framed_as_its_json_escape() -> None:
    frame = sse_frame("x", {"text": "a\ud800b"})
    [event] = SseParser().feed(frame)
    assert json.loads(event.data) == {"text": "a\ud800b"}
