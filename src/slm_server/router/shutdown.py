"""uvicorn's server, with a shutdown that is bounded and always stops the backends.

uvicorn does most of it: on SIGINT/SIGTERM it stops accepting and lets the requests in
flight finish for up to ``timeout_graceful_shutdown`` (``router.shutdown_grace_s``). The
rest is done here, in the order the requests and the backends need:

- The requests still running when the grace is over are cancelled (the app ends each in
  its protocol's way: see ``interrupted``) and given a bounded moment to say their last
  word, and only then does the lifespan shutdown stop the backends. uvicorn's own
  shutdown runs the lifespan shutdown right after the cancel, without waiting: a request
  could then see its backend stop under it before its client got the last event.
- A second Ctrl-C sets ``force_exit``: the wait ends at once, which is fine (a shorter
  grace), but uvicorn then neither cancels the requests nor runs the lifespan shutdown:
  both would happen only as a side effect of ``asyncio.run`` cancelling every task at
  its end, with the signal handlers gone, so that one more Ctrl-C would interrupt it and
  leave the backends to the kernel's SIGKILL. Here the requests are ended and the
  backends stopped after every shutdown, forced or not, and after a failed start-up.
- A client that takes none of its answer (a hidden browser tab following a log, a
  stopped terminal) would hold the whole grace even once its answer is ended: closing a
  connection waits for its unsent bytes to go out. During the shutdown, a connection
  whose client has taken nothing for ``_STALLED_S`` while its buffers are full is
  aborted instead (see ``StalledClients``).
- SIGHUP (reload the config) is caught for the server's whole life, like SIGINT and
  SIGTERM: before start-up completes and once the shutdown has begun it is ignored (and
  said so) rather than left to its default action, which ends the process at once,
  with the backends still running or half stopped.
- uvicorn's server wakes ten times a second to see whether it should stop; this one
  wakes once a second (for the Date header) and is woken at once when told to stop.
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
from collections.abc import Awaitable, Callable, Generator, Iterable
from socket import socket
from types import FrameType
from typing import Protocol, runtime_checkable

import uvicorn

log = logging.getLogger(__name__)

_CUT_SHORT_S = 2.0  # for the requests ended at the grace's end to send their last event
# How often the idle server wakes: to renew the Date header, which has whole seconds.
_TICK_S = 1.0
# A client whose buffers are full and which takes none of them for this long does not read.
_STALLED_S = 1.0
_LOOK_EVERY_S = 0.25


@runtime_checkable
class Transport(Protocol):
    """What is needed of a connection's transport: asyncio's, or uvloop's (which is not
    an ``asyncio.Transport``)."""

    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...


class StalledClients:
    """Finds the connections whose client has stopped reading: the answer waits on it
    (writing paused, or the connection closing with bytes unsent) and not one byte of
    its buffer has gone out for ``stalled_s``. A client that reads, however slowly,
    takes some of its buffer and is left alone."""

    def __init__(self, stalled_s: float = _STALLED_S) -> None:
        self._stalled_s = stalled_s
        self._waiting: dict[object, tuple[int, float]] = {}  # unsent bytes, and since when

    def look(self, connections: Iterable[object], now: float) -> list[Transport]:
        """The transports of ``connections`` stalled for ``stalled_s`` as of ``now``."""
        stalled: list[Transport] = []
        waiting: dict[object, tuple[int, float]] = {}
        for connection in connections:
            transport = getattr(connection, "transport", None)
            # The router's protocol says it itself; uvicorn's, in its flow control.
            flow = getattr(connection, "flow", connection)
            if not isinstance(transport, Transport):
                continue
            unsent = transport.get_write_buffer_size()
            paused = bool(getattr(flow, "write_paused", False))
            if unsent == 0 or not (paused or transport.is_closing()):
                continue
            before, since = self._waiting.get(connection, (-1, now))
            if before != unsent:
                since = now  # some went out (or more came): it reads
            waiting[connection] = (unsent, since)
            if now - since >= self._stalled_s:
                stalled.append(transport)
        self._waiting = waiting
        return stalled


class GracefulServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        stop_backends: Callable[[], Awaitable[None]] | None = None,
        end_streams: Callable[[], None] | None = None,
        *,
        hangup: Callable[[], None] | None = None,
        grace_s: Callable[[], float] | None = None,
    ) -> None:
        """``end_streams``: called as the shutdown begins, to end the answers that would
        never end by themselves (log follows) rather than let them hold the grace.

        ``hangup``: what SIGHUP does while the server serves (in the event loop).
        ``grace_s``: the shutdown grace as it is when the shutdown begins (a config
        reload may have changed it); else ``config.timeout_graceful_shutdown``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None  # set while main_loop runs
        super().__init__(config)
        self._stop_backends = stop_backends
        self._end_streams = end_streams
        self._hangup = hangup
        self._grace_s = grace_s

    # uvicorn's way to stop a server, from its signal handler or its embedder's code:
    # the server's loop is woken for it at once (see main_loop).
    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        woken, loop = self._woken, self._loop
        if value and woken is not None and loop is not None and not loop.is_closed():
            # Possibly from a signal handler, between two bytecodes of the loop's own code.
            loop.call_soon_threadsafe(woken.set)

    async def main_loop(self) -> None:
        """uvicorn's, woken once a second rather than ten times: an idle router then
        costs almost nothing (each wake-up is a system call or two and some Python,
        and on a laptop a CPU leaving its idle state). Asked to stop, it is woken at once."""
        self._woken = woken = asyncio.Event()
        counter = 0
        try:
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000  # uvicorn renews its Date when % 10 == 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_TICK_S):
                        await woken.wait()
                woken.clear()
        finally:
            self._woken = None

    async def serve(self, sockets: list[socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # Captured here too, so that a signal while the backends stop cannot interrupt that.
        with self.capture_signals():
            try:
                await super().serve(sockets)
            finally:  # after a failed start-up too, when no shutdown ran
                if self._stop_backends is not None:
                    await self._stop_backends()

    async def shutdown(self, sockets: list[socket] | None = None) -> None:
        """uvicorn's shutdown, with the requests ended before the backends stop (see above)."""
        log.info("Shutting down")
        if self._end_streams is not None:
            self._end_streams()
        for server in self.servers:
            server.close()  # no new connections
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle ones close now; busy ones after their answer
        watch = asyncio.get_running_loop().create_task(self._abort_stalled())
        grace_s = self._grace_s() if self._grace_s is not None else None
        if grace_s is None:
            grace_s = self.config.timeout_graceful_shutdown
        try:
            with contextlib.suppress(TimeoutError):  # the grace is over: the rest are cut short
                async with asyncio.timeout(grace_s):
                    await self._wait_tasks_to_complete()  # ends at once on force_exit
        finally:
            watch.cancel()
        await self._end_requests()
        await self.lifespan.shutdown()  # the app stops the backends

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
        original[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle_hangup)
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _handle_hangup(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the loop was doing:
        # the decision waits for the loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._hung_up)

    def _hung_up(self) -> None:
        if self.should_exit:
            log.warning("SIGHUP ignored: the server is shutting down")
        elif not self.started:
            log.warning("SIGHUP ignored: the server is still starting; send it again once it is up")
        elif self._hangup is None:
            log.info("SIGHUP ignored")
        else:
            self._hangup()

    async def _abort_stalled(self) -> None:
        """Abort, for as long as the grace lasts, the connections of clients that do not
        read (see above): their requests then end as if the client had left."""
        clients = StalledClients()
        loop = asyncio.get_running_loop()
        while True:
            for transport in clients.look(list(self.server_state.connections), loop.time()):
                unsent = transport.get_write_buffer_size()
                log.info(
                    "closing a connection whose client stopped reading (%d bytes unsent)", unsent
                )
                transport.abort()
            await asyncio.sleep(_LOOK_EVERY_S)

    async def _end_requests(self) -> None:
        """Cancel the requests still running; wait a moment for their last events."""
        running = [task for task in self.server_state.tasks if not task.done()]
        if not running:
            return
        log.warning("ending %d request(s) still running: the shutdown grace is over", len(running))
        for task in running:
            if not task.cancelling():  # a second cancel would cut its own last answer short
                task.cancel("the server is shutting down")
        await asyncio.wait(running, timeout=_CUT_SHORT_S)
