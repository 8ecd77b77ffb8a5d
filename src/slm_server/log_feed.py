"""A log's last lines kept in memory, and live followers fed each new line.

Lines are published on the event loop. Each follower has a bounded queue of its own, fed
without waiting: a follower that reads slowly (or not at all) loses lines, counted, and
never slows whoever writes the log. Everything held is bounded: the tail by lines and
characters, each queue likewise, and the number of followers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

NOTE_PREFIX = "=== slm_server: "  # marks lines of slm_server's own among a log's lines

_QUEUE_LINES = 2000
_QUEUE_CHARS = 1024 * 1024


class TooManyFollowers(Exception):
    """The log already has as many followers as it feeds."""


SLOW_READER = "this reader was too slow"


def dropped_note(count: int, why: str) -> str:
    """The line that stands where ``count`` lines were dropped, ``why`` saying what could
    not keep up: one wording for every log (followed, the router's, a backend's file)."""
    lines = "line" if count == 1 else "lines"
    return f"{NOTE_PREFIX}{count} {lines} dropped here: {why}"


class Follower:
    """One reader's queue of new lines; ``take`` hands them over in order."""

    def __init__(self, max_lines: int = _QUEUE_LINES, max_chars: int = _QUEUE_CHARS) -> None:
        self._lines: list[str] = []
        self._chars = 0
        self._max_lines = max_lines
        self._max_chars = max_chars
        self._dropped = 0
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, line: str) -> None:
        """Queue ``line``, or count it as dropped when the queue is full; never waits.

        Once one line is dropped, so is every later one until the reader takes the queue:
        a short line that would still fit must not pass the longer ones dropped before it.
        """
        full = len(self._lines) >= self._max_lines or self._chars + len(line) > self._max_chars
        if full or self._dropped:
            self._dropped += 1
        else:
            self._lines.append(line)
            self._chars += len(line) + 1
        self._ready.set()

    def close(self) -> None:
        """No more lines: ``take`` returns what is queued, then None."""
        self.closed = True
        self._ready.set()

    async def take(self) -> list[str] | None:
        """Every line queued so far, once there is one; None once closed and empty.

        The queue is taken whole, so lines dropped while it was full came after all of
        it and before anything queued later: their note goes last.
        """
        while not self._lines and not self._dropped:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        lines, self._lines, self._chars = self._lines, [], 0
        if self._dropped:
            lines.append(dropped_note(self._dropped, SLOW_READER))
            self._dropped = 0
        return lines


class LogFeed:
    """The last lines of a log (at most ``tail_lines`` and ``tail_chars``) and its followers."""

    def __init__(
        self, tail_lines: int = 1000, tail_chars: int = 1024 * 1024, max_followers: int = 32
    ) -> None:
        self._tail: deque[str] = deque()
        self._tail_chars = 0
        self._max_lines = tail_lines
        self._max_chars = tail_chars
        self._max_followers = max_followers
        self._followers: set[Follower] = set()

    def publish(self, line: str) -> None:
        """Keep ``line`` (without its line end) and hand it to every follower."""
        self._tail.append(line)
        self._tail_chars += len(line) + 1
        while len(self._tail) > self._max_lines or self._tail_chars > self._max_chars:
            self._tail_chars -= len(self._tail.popleft()) + 1
        for follower in self._followers:
            follower.offer(line)

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines kept (fewer if fewer are kept)."""
        if lines <= 0:
            return []
        if lines >= len(self._tail):
            return list(self._tail)
        return list(self._tail)[-lines:]

    def latest(self) -> Iterator[str]:
        """The lines kept, newest first."""
        return reversed(self._tail)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def end_followers(self) -> None:
        """Every follower ends once it has taken what is queued for it (this log has
        ended: its model was removed or replaced)."""
        for follower in self._followers:
            follower.close()

    @contextmanager
    def follow(self, tail: int) -> Iterator[tuple[list[str], Follower]]:
        """The last ``tail`` lines and a follower fed every line published after them.

        Both are taken in one step on the event loop, so no line is missed or seen twice.
        The follower is dropped from the feed on the way out. TooManyFollowers when the
        feed has ``max_followers`` already.
        """
        if len(self._followers) >= self._max_followers:
            raise TooManyFollowers(f"{len(self._followers)} readers follow this log already")
        follower = Follower()
        lines = self.tail(tail)
        self._followers.add(follower)
        try:
            yield lines, follower
        finally:
            self._followers.discard(follower)
            follower.close()
