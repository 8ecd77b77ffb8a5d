"""Cutting a backend's output into log lines: any shape in, bounded text lines out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from slm_server.supervisor.lines import CUT_MARK, LineSplitter


def split(*chunks: bytes, max_bytes: int = 16) -> list[str]:
    splitter = LineSplitter(max_bytes)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.flush()


def test_lines_end_at_newline_crlf_and_carriage_return() -> None:
    assert split(b"one\ntwo\r\nthree\rfour\n") == ["one", "two", "three", "four"]


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    assert split(b"one\r", b"\ntwo\n") == ["one", "two"]
    assert split(b"one\r", b"\rtwo\n") == ["one", "", "two"]


def test_a_line_split_across_chunks_is_joined() -> None:
    assert split(b"hel", b"lo", b"\n") == ["hello"]


def test_an_overlong_line_is_cut_marked_and_its_rest_dropped() -> None:
    bar = b"#" * 100
    assert split(bar[:30], bar[30:], b"\nnext\n") == ["#" * 16 + CUT_MARK, "next"]


def test_a_progress_bar_redrawn_with_carriage_returns_gives_short_lines() -> None:
    bar = b"".join(b"\r%3d%%" % n for n in range(0, 101, 50))
    assert split(bar, b"\nloaded\n") == ["", "  0%", " 50%", "100%", "loaded"]


def test_output_without_a_final_line_end_is_flushed() -> None:
    assert split(b"last words") == ["last words"]
    assert split(b"") == []


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert split(b"caf\xc3\xa9 \xff\xfe\n") == ["caf\u00e9 \ufffd\ufffd"]


@given(st.lists(st.binary(max_size=200), max_size=20), st.integers(min_value=1, max_value=64))
def test_any_output_gives_bounded_lines_and_loses_no_short_line(
    chunks: list[bytes], max_bytes: int
) -> None:
    splitter = LineSplitter(max_bytes)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.flush()
    limit = max_bytes + len(CUT_MARK)  # never more characters than bytes (U+FFFD is one)
    assert all(len(line) <= limit for line in lines)
    whole = b"".join(chunks).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    short = [raw for raw in whole.split(b"\n") if len(raw) <= max_bytes]
    kept = set(lines)
    assert all(raw.decode("utf-8", errors="replace") in kept for raw in short if raw)
