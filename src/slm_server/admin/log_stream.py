"""``GET /admin/logs/{role}`` and ``GET /admin/logs/router``: a log's last lines, then
(with ``follow=1``) every new line as it is written.

The answer is ``text/plain; charset=utf-8``, chunked, one log line per ``\\n``-terminated
line: first the last ``tail`` lines kept in memory (default 100), then, when following,
each new line, until the client leaves or the server stops. A reader too slow for the
log loses lines rather than slowing it: ``=== slm_server: N lines dropped here: this
reader was too slow`` stands where they were. ``router`` names the router's own log; a
config may not use it as a role name (see the config's validation).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from slm_server.admin.router_log import RouterLog
from slm_server.config.validation import RESERVED_ROLE
from slm_server.log_feed import NOTE_PREFIX, Follower, LogFeed, TooManyFollowers
from slm_server.router.asgi import Message, Receive, Send
from slm_server.router.errors import EndpointNotFound, InvalidRequest, RoleNotFound, RouterError
from slm_server.supervisor import BackendProcess

PREFIX = "/admin/logs/"
ROUTER = RESERVED_ROLE  # the router's own log, never a role (the config refuses it as one)
DEFAULT_TAIL = 100
_ALL = 10**9

_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # A browser shows (and a fetch reads) text/plain as it comes, without sniffing first.
    (b"x-content-type-options", b"nosniff"),
]
_FOLLOW_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_SHUTDOWN_NOTE = f"{NOTE_PREFIX}the server is stopping; this log ends here"
KEYS_CHANGED_NOTE = (
    f"{NOTE_PREFIX}the API keys were changed by a config reload; this log ends here "
    "(follow it again with a key that is still valid)"
)


class TooManyLogReaders(RouterError):
    status = 429
    code = "too_many_log_readers"


def log_name(path: str) -> str | None:
    """The role (or ``router``) a log path names; None for any other path."""
    if not path.startswith(PREFIX):
        return None
    return path[len(PREFIX) :] or None


@dataclass(frozen=True)
class LogQuery:
    tail: int = DEFAULT_TAIL
    follow: bool = False


def parse_query(query: bytes) -> LogQuery:
    """``tail=N`` (lines, 0 or more) and ``follow=1``; InvalidRequest (400) for bad values."""
    fields = urllib.parse.parse_qs(query.decode("latin-1"), keep_blank_values=True)
    tail = DEFAULT_TAIL
    if "tail" in fields:
        text = fields["tail"][-1]
        if not text.isascii() or not text.isdigit():
            raise InvalidRequest(
                f"tail must be a number of lines (0 or more), not {text[:20]!r}", param="tail"
            )
        tail = int(text) if len(text) <= 9 else _ALL  # more than is ever kept: all of it
    follow = False
    if "follow" in fields:
        text = fields["follow"][-1].lower()
        if text not in _FOLLOW_VALUES:
            raise InvalidRequest(f"follow must be 1 or 0, not {text[:20]!r}", param="follow")
        follow = _FOLLOW_VALUES[text]
    return LogQuery(tail, follow)


def feed_of(
    name: str,
    processes: Mapping[str, BackendProcess],
    router_log: RouterLog | None,
    *,
    runs_backends: bool,
    elsewhere: Mapping[str, str] | None = None,
) -> LogFeed:
    """The log ``name`` names: the router's own, or a backend's by its role.

    ``elsewhere``: the enabled roles whose servers run elsewhere, and where."""
    if name == ROUTER:
        if router_log is None:
            raise EndpointNotFound("this router keeps no log of its own in memory")
        return router_log.feed
    if elsewhere and name in elsewhere:
        raise RoleNotFound(
            f"'{name}' runs elsewhere ({elsewhere[name]}): no log of it here; the router's "
            f"own log is at {PREFIX}{ROUTER}"
        )
    process = processes.get(name)
    if process is not None:
        return process.log.feed
    if not runs_backends:
        raise RoleNotFound(
            f"this router does not run its backends (started as `slm-server router`): "
            f"no log of '{name}' here; the router's own log is at {PREFIX}{ROUTER}"
        )
    roles = ", ".join(sorted(processes)) or "none"
    raise RoleNotFound(f"no enabled backend role '{name}'; roles: {roles} (and {ROUTER})")


class LogStreams:
    """The log answers under way, so that a shutdown ends those following at once (a
    follower would otherwise hold the server for its whole shutdown grace). One whose
    client does not read is the server's to cut off: see router/shutdown.py."""

    def __init__(self) -> None:
        self._following: set[Follower] = set()
        self._stopping = False
        self._why_ended: dict[Follower, str] = {}  # the last line of a follow ended here

    def end_all(self) -> None:
        """The server is stopping: every follow ends now, and new ones end after the tail."""
        self._stopping = True
        self.end_following(_SHUTDOWN_NOTE)

    def end_following(self, last_line: str) -> None:
        """Every follow under way ends now, ``last_line`` its last line (the API keys
        changed: a key that opened one may be revoked)."""
        for follower in self._following:
            self._why_ended.setdefault(follower, last_line)
            follower.close()

    async def answer(self, feed: LogFeed, query: LogQuery, receive: Receive, send: Send) -> None:
        if not query.follow or self._stopping:
            await _start(send)
            await send(_body(feed.tail(query.tail), more=False))
            return
        try:
            with feed.follow(query.tail) as (lines, follower):
                self._following.add(follower)
                try:
                    await _relay(lines, follower, receive, send, self)
                finally:
                    self._following.discard(follower)
                    self._why_ended.pop(follower, None)
        except TooManyFollowers as exc:
            raise TooManyLogReaders(f"{exc}; try again once one has left") from None

    def why_ended(self, follower: Follower) -> str | None:
        """The line that ends ``follower``'s answer, if this ended it."""
        return self._why_ended.get(follower)


async def _relay(
    lines: list[str], follower: Follower, receive: Receive, send: Send, streams: LogStreams
) -> None:
    """The tail, then new lines as they come, until the client leaves or the log ends."""
    await _start(send)
    if lines:
        await send(_body(lines, more=True))
    client = _Client(receive, follower)
    try:
        while (batch := await follower.take()) is not None and not client.left:
            await send(_body(batch, more=True))
    finally:
        client.stop_watching()
    if client.left:
        return  # nobody to tell the end to
    last_line = streams.why_ended(follower)
    await send(_body([last_line] if last_line is not None else [], more=False))


class _Client:
    """Watches for the client leaving (``http.disconnect``): its follower ends at once.

    Sending alone would not tell: a server drops what is sent to a client gone.
    """

    def __init__(self, receive: Receive, follower: Follower) -> None:
        self.left = False
        self._receive = receive
        self._follower = follower
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self._follower.close()

    def stop_watching(self) -> None:
        self._task.cancel()


async def _start(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})


def _body(lines: list[str], *, more: bool) -> Message:
    text = "".join(line + "\n" for line in lines)
    return {
        "type": "http.response.body",
        "body": text.encode("utf-8", "replace"),
        "more_body": more,
    }
