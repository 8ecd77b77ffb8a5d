"""One line per request once it has ended, on the ``slm_server.access`` logger.

The line is built only when the logger would write it, in one go, from what the request's
record noted as the answer went out: nothing is measured twice and nothing runs per chunk.
The text reads, fields always in this order::

    req=4f3a9b2c00000001 key=- POST /v1/chat/completions model=gemma 200 512B 83.2ms
    ttfb=12.1ms queue=0.0ms tokens=26/8 native

``-`` stands for a field without a value (no key, no model, no status because the client
left before the answer began, no body byte, no usage reported). The last field says who
answered: ``native`` (the backend, in the client's dialect), ``converted`` (the backend's
chat completion, converted by the router) or ``-`` (the router itself, e.g. an error).
Then, when a backend was tried, ``upstream=<role>/<replica>`` (the last one tried), and
``attempts=N`` when the request was sent to more than one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slm_server.router.backend import UPSTREAM_HEADER
from slm_server.router.bridge import CONVERTED_HEADER
from slm_server.router.failover import ATTEMPTS_HEADER
from slm_server.router.metrics import RequestRecord
from slm_server.router.metrics.tallies import NO_MODEL

ACCESS_LOGGER = "slm_server.access"

# Health checkers ask for it every few seconds, an open dashboard for its status every
# second: their lines would bury the others.
_NOT_LOGGED = frozenset({"/health", "/admin/status"})


class AccessLog:
    """Writes the access line of each request, unless turned off or filtered out."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, method: str, path: str, record: RequestRecord) -> None:
        logger = self._logger
        if self.enabled and path not in _NOT_LOGGED and logger.isEnabledFor(logging.INFO):
            # Made and handled directly: logger.info would also look up its caller's source
            # line in the stack, which no format prints (a microsecond of each line's ~6).
            line = AccessLine(method, path, record)
            logger.handle(logger.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, line, (), None))


class AccessLine:
    """One request's access line, written out as text (``str``) or as JSON fields
    (``log_fields``) by whichever formatter writes the log, and only then: the record it
    reads is done with, nothing changes it any more."""

    __slots__ = ("_method", "_path", "_record")

    def __init__(self, method: str, path: str, record: RequestRecord) -> None:
        self._method = method
        self._path = path
        self._record = record

    def __str__(self) -> str:
        record = self._record
        start = record.start
        stopwatch = record.stopwatch
        first_byte_s = record.first_byte_s
        tokens = record.tokens
        slot = record.slot
        first_byte = "-" if first_byte_s is None else f"{first_byte_s * 1000:.1f}ms"
        queue = "-" if stopwatch is None else f"{stopwatch.queued_s * 1000:.1f}ms"
        return (
            f"req={record.request_id.decode('ascii')} key={record.key} {self._method} "
            f"{_printable(self._path)} model={NO_MODEL if slot is None else slot.model} "
            f"{'-' if start is None else start['status']} {record.bytes_out}B "
            f"{record.duration_s * 1000:.1f}ms ttfb={first_byte} queue={queue} "
            f"tokens={'-' if tokens is None else f'{tokens[0]}/{tokens[1]}'} {_served(record)}"
            f"{_upstream_text(record)}"
        )

    def log_fields(self) -> dict[str, Any]:
        """The fields by name, in the text's order; numbers as numbers, None for ``-``."""
        record = self._record
        start = record.start
        stopwatch = record.stopwatch
        first_byte_s = record.first_byte_s
        tokens = record.tokens
        slot = record.slot
        return {
            "request_id": record.request_id.decode("ascii"),
            "key": record.key,
            "method": self._method,
            "path": self._path,
            "model": NO_MODEL if slot is None else slot.model,
            "status": None if start is None else start["status"],
            "bytes_out": record.bytes_out,
            "duration_ms": _ms(record.duration_s),
            "first_byte_ms": None if first_byte_s is None else _ms(first_byte_s),
            "queue_ms": None if stopwatch is None else _ms(stopwatch.queued_s),
            "prompt_tokens": None if tokens is None else tokens[0],
            "completion_tokens": None if tokens is None else tokens[1],
            "served": _served(record),
            **_upstream_fields(record),
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _printable(path: str) -> str:
    """The client's own path (decoded): quoted and escaped if a space or a control in it
    could break the line, or forge another."""
    return path if path.isprintable() and " " not in path else json.dumps(path)


def _upstream_fields(record: RequestRecord) -> dict[str, str | int]:
    """The upstream that answered and, when there were several, the attempts made: read
    from the answer's headers, so nothing is noted per request for it."""
    start = record.start
    if start is None:
        return {}
    fields: dict[str, str | int] = {}
    for name, value in start.get("headers", ()):
        if name == UPSTREAM_HEADER:
            fields["upstream"] = value.decode("latin-1")
        elif name == ATTEMPTS_HEADER:
            fields["attempts"] = int(value)
    return fields


def _upstream_text(record: RequestRecord) -> str:
    fields = _upstream_fields(record)
    text = f" upstream={fields['upstream']}" if "upstream" in fields else ""
    return text + (f" attempts={fields['attempts']}" if "attempts" in fields else "")


def _served(record: RequestRecord) -> str:
    stopwatch = record.stopwatch
    # The stopwatch gives its figures only with an answer from a backend: the router's own
    # answers (errors, lists) go without them.
    if stopwatch is None or stopwatch.own_s is None or record.start is None:
        return "-"
    for name, _ in record.start.get("headers", ()):
        if name == CONVERTED_HEADER:
            return "converted"
    return "native"
