"""How every log line of the process is written: plain text (the default) or JSON lines.

Set up once, by the command line, for the whole process: the router's lines, the
supervisor's, uvicorn's and the access log alike.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcTime:
    """``2026-12-02T05:01:02.123Z``: UTC, to the millisecond, sortable as text.

    The date and time of day are formatted once a second, not for every line.
    """

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._text}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """One line per record: UTC time, level, logger, message (and a traceback below)."""

    def __init__(self) -> None:
        super().__init__(_TEXT)
        self._time = UtcTime()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the message's own
    fields (a message object with a ``log_fields()`` method, as an access line has); a
    traceback as ``exception``, never across lines."""

    def __init__(self) -> None:
        super().__init__()
        self._time = UtcTime()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        log_fields = getattr(record.msg, "log_fields", None)
        if log_fields is not None:
            line.update(log_fields())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Every log line of this process to stderr, at ``level`` and above, in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
