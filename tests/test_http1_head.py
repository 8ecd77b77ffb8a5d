"""The response head and its body's framing, as decided before anything is written."""

from __future__ import annotations

import pytest

from slm_server.router.http1.head import Framing, InvalidHead, error_answer, response_head

DATE = [(b"date", b"Wed, 02 Dec 2026 12:00:00 GMT")]
JSON = (b"content-type", b"application/json")


def head(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    keep_alive: bool = True,
    http_10: bool = False,
    bodiless: bool = False,
) -> tuple[list[bytes], Framing]:
    raw, framing = response_head(
        status,
        headers if headers is not None else [JSON],
        DATE,
        keep_alive=keep_alive,
        http_10=http_10,
        bodiless=bodiless,
    )
    assert raw.endswith(b"\r\n\r\n")
    return raw[:-4].split(b"\r\n"), framing


def test_a_sized_answer_keeps_its_length_and_the_connection() -> None:
    lines, framing = head(200, [JSON, (b"content-length", b"12")])
    assert lines == [
        b"HTTP/1.1 200 OK",
        b"date: Wed, 02 Dec 2026 12:00:00 GMT",
        b"content-type: application/json",
        b"content-length: 12",
    ]
    assert framing == Framing(chunked=False, length=12, keep_alive=True)


def test_an_unsized_answer_is_chunked() -> None:
    lines, framing = head(200, [(b"content-type", b"text/event-stream")])
    assert lines[-1] == b"transfer-encoding: chunked"
    assert framing == Framing(chunked=True, length=-1, keep_alive=True)


def test_an_unsized_answer_to_http_1_0_ends_with_the_connection() -> None:
    lines, framing = head(200, [JSON], http_10=True)
    assert b"transfer-encoding: chunked" not in lines
    assert lines[-1] == b"connection: close"
    assert framing == Framing(chunked=False, length=-1, keep_alive=False)


def test_an_http_1_0_client_kept_alive_is_told_so() -> None:
    lines, framing = head(200, [(b"content-length", b"2")], http_10=True)
    assert lines[-1] == b"connection: keep-alive"
    assert framing.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodiless_answer_has_no_framing(status: int) -> None:
    lines, framing = head(status, [], bodiless=True)
    assert not any(line.startswith(b"transfer-encoding") for line in lines)
    assert framing.length == -1 and not framing.chunked


def test_an_answer_to_head_keeps_its_length_header_but_has_no_body() -> None:
    lines, framing = head(200, [JSON, (b"content-length", b"99")], bodiless=True)
    assert b"content-length: 99" in lines
    assert framing == Framing(chunked=False, length=-1, keep_alive=True)


def test_connection_close_is_said_once() -> None:
    lines, framing = head(200, [(b"Connection", b"close"), (b"content-length", b"0")])
    assert [line for line in lines if line.startswith(b"connection")] == [b"connection: close"]
    assert not framing.keep_alive
    lines, framing = head(200, [(b"content-length", b"0")], keep_alive=False)
    assert lines[-1] == b"connection: close"


def test_header_names_go_out_in_lower_case() -> None:
    lines, _ = head(200, [(b"X-Request-Id", b"abc"), (b"Content-Length", b"3")])
    assert b"x-request-id: abc" in lines
    assert b"content-length: 3" in lines


@pytest.mark.parametrize(
    "header",
    [
        (b"x-a", b"1\r\nx-injected: 1"),
        (b"x-a", b"1\nx-injected: 1"),
        (b"x-a", b"1\rx-injected: 1"),
        (b"x-a\r\nx-injected", b"1"),
        (b"x-a", b"1\x00"),
    ],
    ids=["crlf", "lf", "cr", "in-name", "nul"],
)
def test_a_header_that_would_split_the_head_is_refused(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidHead):
        head(200, [header])


@pytest.mark.parametrize("length", [b"-1", b"1e3", b"", b"12 "])
def test_a_content_length_that_is_not_a_number_is_refused(length: bytes) -> None:
    with pytest.raises(InvalidHead):
        head(200, [(b"content-length", length)])


@pytest.mark.parametrize("status", [99, 600, 0])
def test_a_status_outside_http_is_refused(status: int) -> None:
    with pytest.raises(InvalidHead):
        head(status)


def test_an_unknown_status_in_range_has_an_empty_phrase() -> None:
    lines, _ = head(299, [(b"content-length", b"0")])
    assert lines[0] == b"HTTP/1.1 299 "


def test_an_error_answer_is_whole_sized_and_closes() -> None:
    body = b'{"error": {}}'
    raw = error_answer(431, body, DATE)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"content-length: %d" % len(body) in lines
    assert lines[-1] == b"connection: close"
    assert rest == body
    assert not error_answer(500, body, DATE, bodiless=True).endswith(body)  # HEAD: no body
