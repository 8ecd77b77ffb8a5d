"""The router's own time on a request, reported to clients as ``x-slm-overhead-ms``."""

from __future__ import annotations

from time import perf_counter

OVERHEAD_HEADER = b"x-slm-overhead-ms"


class Stopwatch:
    """Time spent on a request except while waiting for the backend.

    Started when the request arrives; paused while the backend is asked and
    answers (up to its response headers for a stream, its whole body otherwise);
    read when the response starts, so a stream's figure is its added time to
    the first byte.
    """

    def __init__(self) -> None:
        self._since = perf_counter()
        self._own = 0.0

    def backend_asked(self) -> None:
        self._own += perf_counter() - self._since

    def backend_answered(self) -> None:
        self._since = perf_counter()

    def header(self) -> tuple[bytes, bytes]:
        own_ms = (self._own + perf_counter() - self._since) * 1000
        return OVERHEAD_HEADER, f"{own_ms:.3f}".encode()
