"""What an answer has sent so far, as far as ending it early needs to know."""

from __future__ import annotations

from collections.abc import Awaitable

from slm_server.router.asgi import ENDED_IN_ERROR, Message, Send


class SentMessages:
    """The first message of an answer (its status line) and the latest, as they go out.

    ``send`` is what the request sends through. It is a plain method returning the
    server's awaitable: an async one would add a coroutine to every message, each chunk
    of a stream.
    """

    __slots__ = ("_send", "last", "start")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.start: Message | None = None
        self.last: Message | None = None

    def send(self, message: Message) -> Awaitable[None]:
        if self.start is None:
            self.start = message
        else:
            self.last = message
        return self._send(message)

    @property
    def complete(self) -> bool:
        """True once the final message (no ``more_body``) is out: the answer is whole."""
        last = self.last
        return last is not None and not last.get("more_body", False)

    @property
    def ended_in_error(self) -> bool:
        """True if the answer's last message said it ended with an error (ENDED_IN_ERROR)."""
        last = self.last
        return last is not None and bool(last.get(ENDED_IN_ERROR, False))
