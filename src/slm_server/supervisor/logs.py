"""A backend's output: a rotated log file plus the last lines kept in memory."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import IO

# Rotation keeps a chatty backend from filling the disk: at most
# (1 + _KEEP_ROTATED) * _MAX_BYTES per backend.
_MAX_BYTES = 10 * 1024 * 1024
_KEEP_ROTATED = 2
_NOTE_PREFIX = "=== slm_server: "  # marks the supervisor's own lines in a backend's log


def log_file_name(model_id: str) -> str:
    """``logs/<id>.log``, with the ``/`` of Hugging Face style ids made safe."""
    return model_id.replace("/", "--").replace("\\", "--") + ".log"


class BackendLog:
    """Appends lines to ``path`` (rotated by size) and keeps the last ``tail_lines``."""

    def __init__(self, path: Path, tail_lines: int = 200) -> None:
        self.path = path
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._file: IO[str] | None = None
        self._size = 0

    def write(self, line: str) -> None:
        line = line.rstrip("\r\n")
        self._tail.append(line)
        file = self._open()
        file.write(line + "\n")
        file.flush()
        self._size += len(line) + 1
        if self._size >= _MAX_BYTES:
            self._rotate()

    def note(self, text: str) -> None:
        """A line of the supervisor's own among the backend's output."""
        self.write(_NOTE_PREFIX + text)

    def tail(self, lines: int = 20) -> list[str]:
        return list(self._tail)[-lines:]

    def last_output(self) -> str | None:
        """The backend's latest non-blank line, if it has written one since the last note."""
        for line in reversed(self._tail):
            if line.startswith(_NOTE_PREFIX):
                return None
            if line.strip():
                return line
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", errors="replace")
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        self.close()
        for n in range(_KEEP_ROTATED, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if newer.exists():
                newer.replace(older)
