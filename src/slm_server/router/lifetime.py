"""What bounds one request in time: a single deadline, and its client still being there.

The deadline runs from the request's arrival for its entry's ``default_timeout`` and
covers every wait in turn: a slot, a loading backend, the backend's answer (for a stream,
its response headers), and a converted retry after a native try. Whichever phase is
running when it passes is named in the 504.

The backend's answer, which every request waits for, is bounded by the request's one
timer (see ``answer_begins``) rather than an ``asyncio.timeout`` of its own: measured on
uvloop, one of those took about 5 us, some 6% of the router's work per request,
where the timer is there anyway, to start watching the client.

A client that hangs up is told by the router's own server, which calls back when the
connection is lost (the WATCH_DISCONNECT extension); the callback cancels the request's
own task. Under another server it is noticed by a watcher task reading ``receive()`` for
``http.disconnect``; it cancels the request's own task (as ``asyncio.timeout`` does on
expiry), so the request stops wherever it is: queued, waiting for a load, or waiting for
the backend, which then sees its connection dropped. Once the answer is complete a server
says http.disconnect too (uvicorn does, at once): the watcher then just ends, so that
what runs after the last byte is not taken for a client leaving. The watcher costs a task, so a
request that is quickly answered never starts one: it starts the moment the request has to
wait (for a slot or a load), and otherwise only once the request has run for
``_WATCH_AFTER_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol, TypeVar

from slm_server.router.asgi import Receive
from slm_server.router.errors import BackendTimeout
from slm_server.router.sent import SentMessages
from slm_server.router.stopwatch import Stopwatch

T = TypeVar("T")


# The WATCH_DISCONNECT extension: a callback to call should the client leave; None: no more.
WatchDisconnect = Callable[[Callable[[], object] | None], None]


class Labelled(Protocol):
    """What a request goes to, as its 504 names it (a Backend)."""

    @property
    def label(self) -> str: ...


# The phases a request's deadline can run out in, as the 504 names them.
ROOM = "waiting for memory held by other models"
LOADING = "loading the backend"
QUEUED = "waiting for a free slot"
ANSWERING = "waiting for the backend's answer"

# How long a request runs before its client is watched when it never had to wait: a client
# that leaves earlier is noticed then. Most answers from a fast backend are done by then.
_WATCH_AFTER_S = 0.05


class RequestLifetime:
    """One request's deadline, stopwatch and watch on its client, from arrival to answer.

    ``begin`` once the backend is known (its ``default_timeout`` sets the deadline); then
    ``end`` in a ``finally``, and on a CancelledError ask ``client_left`` whose it was.
    """

    __slots__ = (
        "_answering",
        "_arrived",
        "_cancelling",
        "_cut",
        "_left",
        "_loop",
        "_receive",
        "_sent",
        "_timer",
        "_told",
        "_watcher",
        "deadline",
        "for_whom",
        "stopwatch",
        "task",
        "timeout",
        "upstream_asked",
    )

    def __init__(
        self,
        receive: Receive,
        sent: SentMessages,
        loop: asyncio.AbstractEventLoop | None = None,
        watch_disconnect: WatchDisconnect | None = None,
    ) -> None:
        """``loop``: the running one, when the caller knows it (else it is asked for).
        ``watch_disconnect``: the server's WATCH_DISCONNECT, if it offers it."""
        self.stopwatch = Stopwatch()
        # Asked for once per request at most: on Python 3.11 each get_running_loop() makes
        # a getpid() system call, which profiles under load showed among the costliest
        # lines of a request.
        self._loop = loop = loop or asyncio.get_running_loop()
        # The task the request arrives in (read_body watches it); ``begin`` takes the one
        # it goes on in, the same one in the app.
        self.task: asyncio.Task[object] | None = asyncio.current_task(loop)
        self._arrived = loop.time()
        self._receive = receive
        self._sent = sent
        self.deadline = self._arrived
        self.timeout = 0.0
        self.for_whom: Labelled | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        # The server tells of a client leaving: no watcher task, and none to start late.
        self._told = watch_disconnect
        self._left = False
        self._answering = False  # between answer_begins and answer_ends
        self._cut = False  # the deadline cancelled the task while it was answering
        self._cancelling = 0  # the task's pending cancels when the answer began
        # Set once a request went out to an upstream (cleared by whoever sends it on to
        # another): what failed before that was no upstream's doing.
        self.upstream_asked = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the request runs on: for code that would otherwise ask asyncio."""
        return self._loop

    def begin(self, timeout: float, for_whom: Labelled) -> None:
        """The request goes to the backend ``for_whom``, within ``timeout`` s of its arrival.

        Its label is read only if the deadline runs out (Backend.label is made on each read).
        """
        self.timeout = timeout
        self.for_whom = for_whom
        self.deadline = deadline = self._arrived + timeout
        self.task = asyncio.current_task(self._loop)
        if self._told is not None:  # watched from now on, for nothing: one timer, the deadline
            self._told(self._client_gone)
            self._timer = self._loop.call_at(deadline, self._tick)
            return
        # One timer: first to watch the client (see _WATCH_AFTER_S), then for the deadline.
        first = self._arrived + _WATCH_AFTER_S
        if deadline < first:  # min(), without its call
            first = deadline
        self._timer = self._loop.call_at(first, self._tick)

    def _tick(self) -> None:
        # Both ticks watch: a deadline before the first watch, or a first tick run late,
        # must not leave a stream relayed past its deadline unwatched.
        self.watch()
        loop = self._loop
        if loop.time() < self.deadline:
            self._timer = loop.call_at(self.deadline, self._tick)
            return
        self._timer = None
        if self._answering:  # the other waits have their own timeouts (see wait_for)
            self._cut = True
            assert self.task is not None
            self.task.cancel()

    def answer_begins(self) -> None:
        """The backend is asked now: should the deadline pass before answer_ends, the task
        is cancelled, and ``answer_cut`` says so. BackendTimeout if it has passed already."""
        if self._timer is None:  # only once the deadline has passed
            raise self.ran_out(ANSWERING)
        self.upstream_asked = True
        assert self.task is not None
        self._cancelling = self.task.cancelling()
        self._answering = True

    def answer_cut(self) -> bool:
        """For a CancelledError between answer_begins and answer_ends: True if the deadline
        alone sent it (then it is consumed: raise ``ran_out(ANSWERING)`` instead), as
        asyncio.timeout decides; False if something else cancelled too (the client left,
        a shutdown)."""
        if not self._cut:
            return False
        self._cut = False
        assert self.task is not None
        return self.task.uncancel() <= self._cancelling

    def answer_ends(self) -> None:
        self._answering = False

    async def answer(self, waiting: Coroutine[object, None, T]) -> T:
        """Await ``waiting`` (the backend's answer, or part of it) within the deadline:
        BackendTimeout if it passes first. The request's timer bounds it, as it does
        forward's, instead of an ``asyncio.timeout`` of its own (see the module's doc)."""
        try:
            self.answer_begins()
        except BaseException:
            waiting.close()  # never started: closed here, not left to warn when collected
            raise
        try:
            return await waiting
        except asyncio.CancelledError:
            if self.answer_cut():
                raise self.ran_out(ANSWERING) from None
            raise
        finally:
            self.answer_ends()

    async def wait_for(self, waiting: Awaitable[T], phase: str) -> T:
        """Await a wait for a slot or a load: bounded by the deadline, ended by the client
        leaving, and counted as queue time rather than the router's own."""
        self.watch()
        self.stopwatch.pause()
        try:
            async with asyncio.timeout_at(self.deadline):
                return await waiting
        except TimeoutError:
            raise self.ran_out(phase) from None
        finally:
            self.stopwatch.resume_after_queue()

    def ran_out(self, phase: str) -> BackendTimeout:
        return BackendTimeout(
            f"{self.for_whom.label if self.for_whom else 'the backend'}: "
            f"its default_timeout of {self.timeout:g}s ran out while {phase}"
        )

    def watch(self) -> None:
        """Start watching for the client leaving now, if not yet."""
        if self._watcher is not None:
            return
        if self._told is not None:
            self._told(self._client_gone)  # again, if begin did: it is the same callback
            return
        self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._client_gone()

    def _client_gone(self) -> None:
        if self._sent.complete:  # the answer is whole: the client did not leave early
            return
        self._left = True
        assert self.task is not None
        self.task.cancel()

    def client_left(self) -> bool:
        """For a CancelledError in the request's task: True if the watcher alone sent it
        (then it is consumed); False if something else, e.g. a shutdown, cancelled too."""
        assert self.task is not None
        return self._left and self.task.uncancel() == 0

    def end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._told is not None:
            self._told(None)
