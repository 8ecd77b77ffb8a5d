"""A backend's output cut into log lines, whatever its shape.

A download bar writes one "line" of hundreds of KB redrawn with ``\\r``; a crashing
program may stop mid-line or write bytes that are not UTF-8. Each becomes bounded lines
of text: a line ends at ``\\n``, ``\\r\\n`` or ``\\r``; one longer than ``max_bytes`` is
cut there, marked, and the rest of it dropped; nothing is held beyond ``max_bytes``.
"""

from __future__ import annotations

import re

CUT_MARK = " [... line cut]"
_END = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    def __init__(self, max_bytes: int = 4096) -> None:
        self._max = max_bytes
        self._pending = bytearray()
        self._cutting = False  # dropping the rest of a line already cut
        self._after_cr = False  # a "\r" ended the last chunk: a "\n" next belongs to it

    def feed(self, data: bytes) -> list[str]:
        """The lines completed by ``data``."""
        if not data:
            return []
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = data.endswith(b"\r")
        lines: list[str] = []
        start = 0
        for end in _END.finditer(data):
            self._take(data[start : end.start()], lines)
            self._finish(lines)
            start = end.end()
        self._take(data[start:], lines)
        return lines

    def flush(self) -> list[str]:
        """What is left when the output ends without a line end."""
        lines: list[str] = []
        if self._pending:
            self._finish(lines)
        self._cutting = False
        return lines

    def _take(self, piece: bytes, lines: list[str]) -> None:
        if self._cutting or not piece:
            return
        room = self._max - len(self._pending)
        self._pending += piece[:room]
        if len(piece) > room:
            lines.append(_text(self._pending) + CUT_MARK)
            self._pending.clear()
            self._cutting = True

    def _finish(self, lines: list[str]) -> None:
        if not self._cutting:
            lines.append(_text(self._pending))
        self._pending.clear()
        self._cutting = False


def _text(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace")
