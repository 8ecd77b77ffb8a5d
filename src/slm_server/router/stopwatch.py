"""The router's own time on a request and its time queued, reported to clients in headers."""

from __future__ import annotations

from time import perf_counter

OVERHEAD_HEADER = b"x-slm-overhead-ms"
QUEUE_HEADER = b"x-slm-queue-ms"


class Stopwatch:
    """Time spent on a request by the router itself, and time it waited to be served.

    Started (``resume``) once the request's body has arrived: a slow upload is the client's
    time, not the router's. Paused while the request waits for a slot or for its
    backend to load (that time is its queue time) and while the backend is asked and
    answers (up to its response headers for a stream, its whole body otherwise). Read when
    the response starts, so a stream's figure is the router's added time to the first byte.
    """

    __slots__ = ("_own", "_queued", "_since", "own_s")

    def __init__(self) -> None:
        self._since = perf_counter()
        self._own = 0.0
        self._queued = 0.0
        self.own_s: float | None = None  # the figure the header gave, once it is given

    def pause(self) -> None:
        now = perf_counter()
        self._own += now - self._since
        self._since = now

    def resume(self) -> None:
        self._since = perf_counter()

    def resume_after_queue(self) -> None:
        """Resume after a pause spent waiting for a slot or a load."""
        now = perf_counter()
        self._queued += now - self._since
        self._since = now

    @property
    def queued_s(self) -> float:
        """Time spent waiting for a slot or a load so far."""
        return self._queued

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``x-slm-overhead-ms``, and ``x-slm-queue-ms`` when the request waited at all."""
        self.own_s = own_s = self._own + perf_counter() - self._since
        own_ms = own_s * 1000
        if not self._queued:
            return [(OVERHEAD_HEADER, f"{own_ms:.3f}".encode())]
        queued_ms = self._queued * 1000
        return [
            (OVERHEAD_HEADER, f"{own_ms:.3f}".encode()),
            (QUEUE_HEADER, f"{queued_ms:.3f}".encode()),
        ]
