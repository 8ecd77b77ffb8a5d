"""uvicorn's server, with a shutdown that is bounded and always stops the backends.

uvicorn does most of it, and is used as it is meant to be: on SIGINT/SIGTERM it stops
accepting, lets the requests in flight finish for up to ``timeout_graceful_shutdown``
(``router.shutdown_grace_s``), then cancels the rest (the app ends each in its
protocol's way: see ``interrupted``) and runs the lifespan shutdown, which stops the
backends. Three gaps are closed here, through the methods it has for this:

- A second Ctrl-C sets ``force_exit``: the wait ends at once, which is fine (a shorter
  grace), but uvicorn then neither cancels the requests nor runs the lifespan shutdown:
  both would happen only as a side effect of ``asyncio.run`` cancelling every task at
  its end, with the signal handlers gone, so that one more Ctrl-C would interrupt it and
  leave the backends to the kernel's SIGKILL. Here the requests are ended and the
  backends stopped after every shutdown, forced or not, and after a failed start-up.
- uvicorn does not wait for the requests it cancelled: they could not say their last
  word before the loop closes. Here they get a bounded moment to.
- After serving, uvicorn raises the signal it caught again, for a program that embeds
  it: SIGTERM would then kill this process (exit status 143) after a clean shutdown.
  This process is the program: a shutdown it was asked for and completed exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Generator
from socket import socket
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

_CUT_SHORT_S = 2.0  # for the requests ended at the grace's end to send their last event


class GracefulServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, stop_backends: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(config)
        self._stop_backends = stop_backends

    async def serve(self, sockets: list[socket] | None = None) -> None:
        # Captured here too, so that a signal while the backends stop cannot interrupt that.
        with self.capture_signals():
            try:
                await super().serve(sockets)
            finally:  # after a failed start-up too, when no shutdown ran
                if self._stop_backends is not None:
                    await self._stop_backends()

    async def shutdown(self, sockets: list[socket] | None = None) -> None:
        await super().shutdown(sockets)
        await self._end_requests()
        done = getattr(self.lifespan, "shutdown_event", None)  # lifespan "on" has it
        if self.force_exit and done is not None and not done.is_set():
            await self.lifespan.shutdown()  # skipped by uvicorn: the app stops the backends

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            log.warning("stopping now: requests still running are ended, backends stopped")
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without raising the caught signal again afterwards (see above)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def _end_requests(self) -> None:
        """Cancel the requests still running (unless uvicorn did); wait a moment for them."""
        running = [task for task in self.server_state.tasks if not task.done()]
        if not running:
            return
        for task in running:
            if not task.cancelling():  # a second cancel would cut its last event short
                task.cancel("the server is shutting down")
        await asyncio.wait(running, timeout=_CUT_SHORT_S)
