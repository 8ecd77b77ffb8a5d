"""One request as the metrics and the access log see it: noted as its answer goes out,
counted once it ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter

from slm_server.router.asgi import ENDED_IN_ERROR, Headers, Message, Send
from slm_server.router.metrics.tallies import (
    CUT,
    NO_KEY,
    NO_MODEL,
    SERVER_ERROR,
    EndpointTally,
    RequestTallies,
)
from slm_server.router.metrics.usage import (
    TAIL_BYTES,
    answer_tail,
    answer_usage,
    whole_answer_usage,
)
from slm_server.router.sent import SentMessages
from slm_server.router.stopwatch import Stopwatch

# The earlier pieces are trimmed each time this much more was sent (see _trim_earlier).
_TRIM_EVERY = 4 * TAIL_BYTES


class RequestRecord(SentMessages):
    """The answer's messages as they go out (see SentMessages), plus what the metrics need.

    Made when the request arrives, in the slot of model ``-`` for its path (None: a path
    that is not a model endpoint, counted only if refused); ``routed`` moves it to its
    model's slot once the backend is known; ``finish`` adds it to the tallies, once.
    Per message it only keeps references (the first body piece, and the last pieces that
    hold the answer's last ``TAIL_BYTES``) and a count of bytes, and, on the first body
    piece, reads the clock. ``answer_headers`` are added to the answer's status line (its
    request id, CORS), whoever sends it: a backend's answer or the router's own error.
    """

    __slots__ = (
        "_arrived",
        "_earlier",
        "_first_byte_s",
        "_first_piece",
        "_in_pieces",
        "_latest",
        "_piece",
        "_stopwatch",
        "_tallies",
        "_trim_at",
        "_write",
        "answer_headers",
        "bytes_out",
        "duration_s",
        "key",
        "on_start",
        "request_id",
        "slot",
        "tokens",
    )

    def __init__(
        self,
        send: Send,
        tallies: RequestTallies,
        path: str,
        request_id: bytes = b"-",
        answer_headers: Headers | None = None,
        write_piece: Callable[[bytes], bool] | None = None,
    ) -> None:
        """``write_piece``: the server's WRITE_PIECE, if it offers it."""
        # SentMessages.__init__'s work done here, not called: this runs for every request.
        self._send = send
        self._write = write_piece
        self._piece: Message | None = None
        self.start: Message | None = None
        self.last: Message | None = None
        self._arrived = perf_counter()
        self._tallies = tallies
        self.slot: EndpointTally | None = tallies.unrouted.get(path)
        self.request_id = request_id
        self.answer_headers: Headers | None = answer_headers
        self.key = NO_KEY  # the API key's name, once keys are checked
        self._stopwatch: Stopwatch | None = None
        self._first_byte_s = 0.0  # from arrival; 0 until a body byte went out
        self._in_pieces = False  # the answer's first piece said more would follow: a stream
        self._first_piece = b""
        self._latest = b""  # the last body piece
        # Pieces before it, so that small pieces never push the usage out of the answer's
        # last TAIL_BYTES. Trimmed to those the tail reaches into after every few times
        # TAIL_BYTES sent (not on every piece: a stream's chunks stay cheap), so a long
        # answer keeps about 20 KiB of them at most. Made only for a second piece, with
        # _trim_at (the bytes_out past which they are trimmed next).
        self._earlier: list[bytes] | None = None
        self.bytes_out = 0  # of the answer's body
        self.duration_s = 0.0  # from arrival to the end; set by finish
        self.tokens: tuple[int, int] | None = None  # prompt, completion: the backend's usage
        # Told the answer's status as its status line goes out (the balancer learns of a
        # good head there, not at a long stream's end).
        self.on_start: Callable[[int], object] | None = None

    def routed(self, slot: EndpointTally, stopwatch: Stopwatch) -> None:
        """The request goes to ``slot``'s model; ``stopwatch`` times the router's own part."""
        self.slot = slot
        self._stopwatch = stopwatch

    @property
    def stopwatch(self) -> Stopwatch | None:
        return self._stopwatch

    @property
    def first_piece(self) -> bytes:
        """The answer's first body piece (b"" until one went out)."""
        return self._first_piece

    @property
    def first_byte_s(self) -> float | None:
        """From arrival to the answer's first body byte; None if none went out."""
        return self._first_byte_s or None

    def send(self, message: Message) -> Awaitable[None]:
        # SentMessages.send's work is done here, not called: one Python frame per chunk.
        if self.start is None:  # the status line: no body to note
            added = self.answer_headers
            if added:
                # A copy, never the sender's own list: some are constants (a log stream's).
                headers = message.get("headers")
                message = {**message, "headers": [*headers, *added] if headers else added}
            self.start = message
            on_start = self.on_start
            if on_start is not None:
                on_start(message["status"])
            return self._send(message)
        self.last = message
        body = message.get("body")
        if body:
            self._note(body, message.get("more_body", False))
        return self._send(message)

    @property
    def writes_pieces(self) -> bool:
        """Whether ``write_piece`` may be used: the server offers WRITE_PIECE."""
        return self._write is not None

    def write_piece(self, piece: bytes) -> bool:
        """``send`` of a body piece with more to follow, without a message: noted, then
        written by the server at once; False once the client has fallen behind (then
        await ``drained``)."""
        message = self._piece  # one message, updated: ``last``, for an early end
        if message is None:
            message = self._piece = {"type": "http.response.body", "more_body": True}
        message["body"] = piece
        self.last = message
        self._note(piece, True)
        assert self._write is not None
        return self._write(piece)

    def drained(self) -> Awaitable[None]:
        """Done once a client that fell behind has taken what was written to it."""
        return self._send({"type": "http.response.body", "body": b"", "more_body": True})

    def _note(self, body: bytes, more: bool) -> None:
        self.bytes_out = sent = self.bytes_out + len(body)
        if not self._first_byte_s:
            self._first_byte_s = perf_counter() - self._arrived
            self._in_pieces = more
            self._first_piece = body
        else:
            earlier = self._earlier
            if earlier is None:
                earlier = self._earlier = []
                self._trim_at = _TRIM_EVERY
            earlier.append(self._latest)
            if sent > self._trim_at:
                self._trim_earlier(earlier)
                self._trim_at = sent + _TRIM_EVERY
        self._latest = body

    @staticmethod
    def _trim_earlier(earlier: list[bytes]) -> None:
        """Keep only the earlier pieces the answer's last TAIL_BYTES may reach into."""
        kept = 0
        for at in range(len(earlier) - 1, -1, -1):
            kept += len(earlier[at])
            if kept >= TAIL_BYTES:
                del earlier[:at]
                return

    def finish(self, refusal: str | None = None) -> None:
        """Count the request, now that it has ended; ``refusal``: its router error's code.

        An answer that ended with an error after its status line (ENDED_IN_ERROR) counts as
        5xx, one that began and never ended (the client left) as cut."""
        self.duration_s = duration_s = perf_counter() - self._arrived
        slot = self.slot
        if refusal is not None:
            self._tallies.reject(NO_MODEL if slot is None else slot.model, refusal)
        if slot is None:
            return
        # SentMessages.complete and .ended_in_error, read here without their calls.
        start = self.start
        last = self.last
        status: int = 0
        if start is None:
            status_class = 0
        else:
            status = start["status"]
            if last is None:
                status_class = CUT
            elif last.get(ENDED_IN_ERROR, False):
                status_class = max(status // 100, SERVER_ERROR)
            elif last.get("more_body", False):
                status_class = CUT
            else:
                status_class = status // 100
                if status_class > SERVER_ERROR:  # min(), without its call
                    status_class = SERVER_ERROR
        slot.count(self.key, status_class)
        slot.duration.observe(duration_s)
        stopwatch = self._stopwatch
        if stopwatch is not None and stopwatch.own_s is not None:
            self._tallies.overhead.observe(stopwatch.own_s)
        if self._in_pieces:
            slot.first_byte.observe(self._first_byte_s)
        if 200 <= status < 300 and self.bytes_out:
            earlier = self._earlier
            if earlier is None and not self._in_pieces:  # a whole answer in one piece
                usage = whole_answer_usage(self._latest)
            else:
                tail = answer_tail(earlier, self._latest) if earlier else self._latest
                usage = answer_usage(self._first_piece, tail)
            if usage is not None:
                self.tokens = usage
                slot.prompt_tokens += usage[0]
                slot.completion_tokens += usage[1]
