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
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slm_server.router.metrics import RequestRecord
from slm_server.router.metrics.tallies import NO_MODEL

ACCESS_LOGGER = "slm_server.access"

# Health checkers ask for it every few seconds; its lines would bury the others.
_NOT_LOGGED = frozenset({"/health"})
_CONVERTED_HEADER = b"x-slm-converted-from"

# The fields in the order the text gives them (and JSON lists them).
_FIELDS = (
    "request_id",
    "key",
    "method",
    "path",
    "model",
    "status",
    "bytes_out",
    "duration_ms",
    "first_byte_ms",
    "queue_ms",
    "prompt_tokens",
    "completion_tokens",
    "served",
)


class AccessLog:
    """Writes the access line of each request, unless turned off or filtered out."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, method: str, path: str, record: RequestRecord) -> None:
        if self.enabled and path not in _NOT_LOGGED and self._logger.isEnabledFor(logging.INFO):
            self._logger.info(AccessLine(method, path, record))


class AccessLine:
    """One request's access line: its fields, written out as text (``str``) or as JSON
    fields (``log_fields``) by whichever formatter writes the log."""

    __slots__ = (
        "bytes_out",
        "completion_tokens",
        "duration_ms",
        "first_byte_ms",
        "key",
        "method",
        "model",
        "path",
        "prompt_tokens",
        "queue_ms",
        "request_id",
        "served",
        "status",
    )

    def __init__(self, method: str, path: str, record: RequestRecord) -> None:
        start = record.start
        stopwatch = record.stopwatch
        first_byte_s = record.first_byte_s
        tokens = record.tokens
        slot = record.slot
        self.request_id = record.request_id.decode("ascii")
        self.key = record.key
        self.method = method
        # The path is the client's own (decoded): a space or a newline in it must not break
        # the line, nor forge another.
        self.path = path if path.isprintable() and " " not in path else json.dumps(path)
        self.model = NO_MODEL if slot is None else slot.model
        self.status: int | None = None if start is None else start["status"]
        self.bytes_out = record.bytes_out
        self.duration_ms = record.duration_s * 1000
        self.first_byte_ms = None if first_byte_s is None else first_byte_s * 1000
        self.queue_ms = None if stopwatch is None else stopwatch.queued_s * 1000
        self.prompt_tokens = None if tokens is None else tokens[0]
        self.completion_tokens = None if tokens is None else tokens[1]
        self.served = _served(record)

    def __str__(self) -> str:
        first_byte = "-" if self.first_byte_ms is None else f"{self.first_byte_ms:.1f}ms"
        queue = "-" if self.queue_ms is None else f"{self.queue_ms:.1f}ms"
        prompt, completion = self.prompt_tokens, self.completion_tokens
        tokens = "-" if prompt is None else f"{prompt}/{completion}"
        return (
            f"req={self.request_id} key={self.key} {self.method} {self.path} model={self.model} "
            f"{'-' if self.status is None else self.status} {self.bytes_out}B "
            f"{self.duration_ms:.1f}ms ttfb={first_byte} queue={queue} tokens={tokens} "
            f"{self.served}"
        )

    def log_fields(self) -> dict[str, Any]:
        """The fields by name; numbers as numbers, None where the text has ``-``."""
        fields = {name: getattr(self, name) for name in _FIELDS}
        for name in ("duration_ms", "first_byte_ms", "queue_ms"):
            if fields[name] is not None:
                fields[name] = round(fields[name], 3)
        return fields


def _served(record: RequestRecord) -> str:
    stopwatch = record.stopwatch
    # The stopwatch gives its figures only with an answer from a backend: the router's own
    # answers (errors, lists) go without them.
    if stopwatch is None or stopwatch.own_s is None or record.start is None:
        return "-"
    for name, _ in record.start.get("headers", ()):
        if name == _CONVERTED_HEADER:
            return "converted"
    return "native"
