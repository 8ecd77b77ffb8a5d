"""A response's head as bytes: the status line, the headers, and how its body is framed.

Pure: no sockets. The head is checked once as a whole for what could split it (a CR,
LF or NUL inside a header), rather than header by header, so that the common head of a
few trusted headers costs a join and two counts.
"""

from __future__ import annotations

import http
from collections.abc import Iterable
from dataclasses import dataclass

Headers = Iterable[tuple[bytes, bytes]]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class InvalidHead(Exception):
    """The app asked for a head that cannot be sent as asked."""


@dataclass(slots=True)
class Framing:
    """How the body after a head is sent."""

    chunked: bool
    # The body's declared size; -1: none declared.
    length: int
    # The connection stays open for another request after this answer.
    keep_alive: bool


def response_head(
    status: int,
    headers: Headers,
    default_headers: Headers,
    *,
    keep_alive: bool,
    http_10: bool,
    bodiless: bool,
) -> tuple[bytes, Framing]:
    """The head to write, and how the body that follows it is framed.

    ``keep_alive``: the request allows another after it; ``http_10``: an HTTP/1.0
    client, which knows no chunked framing (a body of unknown size is then ended by
    closing the connection); ``bodiless``: the answer has no body whatever its headers
    say (HEAD, 1xx, 204, 304).
    """
    status_line = _STATUS_LINES.get(status)
    if status_line is None:
        raise InvalidHead(f"status {status} is not an HTTP status")
    parts = [status_line]
    length = -1
    chunked = False
    close_said = False
    lines = 2  # the status line, and the empty line that ends the head
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise InvalidHead(f"content-length {value!r} is not a number")
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        elif lower == b"connection" and b"close" in value.lower():
            keep_alive = False
            close_said = True
        parts += (lower, b": ", value, b"\r\n")
        lines += 1
    if not bodiless and length < 0 and not chunked:
        if http_10:
            keep_alive = False  # the body ends where the connection does
        else:
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
    if not keep_alive and not close_said:
        parts.append(b"connection: close\r\n")
        lines += 1
    elif keep_alive and http_10:  # persistence is not the default before HTTP/1.1
        parts.append(b"connection: keep-alive\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise InvalidHead("a response header holds a line break or a NUL byte")
    return head, Framing(chunked and not bodiless, -1 if bodiless else length, keep_alive)


def error_answer(
    status: int,
    body: bytes,
    default_headers: Headers,
    *,
    http_10: bool = False,
    bodiless: bool = False,
) -> bytes:
    """A whole JSON answer (an error envelope) after which the connection closes."""
    head, _ = response_head(
        status,
        [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        default_headers,
        keep_alive=False,
        http_10=http_10,
        bodiless=bodiless,
    )
    return head if bodiless else head + body
