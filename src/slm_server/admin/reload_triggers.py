"""What starts a reload besides ``POST /admin/reload``: SIGHUP (caught by the server:
see router/shutdown.py, which calls ``ReloadRequests.ask``), and a change of the file.

The file is watched by polling its size, modification time and inode a few times a
second: ``watchfiles`` (inotify) is not among the dependencies, and one ``stat`` call
every quarter second costs nothing. A change counts once the file has stayed the same
for ``DEBOUNCE_S``: an editor that saves in two steps (truncate then write, or write a
copy then rename it over) makes one reload, not two, and never one of a half-written
file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.25
DEBOUNCE_S = 0.5

Signature = tuple[int, int, int] | None  # (inode, size, mtime_ns); None: no file


@dataclass(frozen=True)
class Triggers:
    """What reloads the config besides the HTTP call and SIGHUP."""

    watch_file: bool = False


class ReloadRequests:
    """Runs the reloads asked for by a signal or the watcher, in the background.

    One runs at a time; asked again meanwhile, one more follows it (with the file as it
    is then), however many times it was asked."""

    def __init__(self, reload: Callable[[], Awaitable[None]]) -> None:
        """``reload``: one reload, which logs its own failures."""
        self._reload = reload
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._watcher: asyncio.Task[None] | None = None

    def start(self, triggers: Triggers, path: Path) -> None:
        loop = asyncio.get_running_loop()
        if triggers.watch_file:
            self._watcher = loop.create_task(watch(path, self.ask), name="config watcher")
            log.info("watching %s: a change reloads it", path)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ask(self, why: str) -> None:
        if self.running:
            self._again = True
            return
        log.info("%s: reloading the config", why)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            await self._reload()
            if not self._again:
                return
            log.info("reloading the config again: it was asked for meanwhile")

    async def aclose(self) -> None:
        for task in (self._watcher, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def watch(
    path: Path,
    changed: Callable[[str], None],
    poll_s: float = POLL_S,
    debounce_s: float = DEBOUNCE_S,
) -> None:
    """Call ``changed`` once per settled change of ``path`` (see the module's docstring)."""
    seen = signature(path)
    while True:
        await asyncio.sleep(poll_s)
        now = signature(path)
        if now == seen:
            continue
        settled_at = asyncio.get_running_loop().time() + debounce_s
        while asyncio.get_running_loop().time() < settled_at:
            await asyncio.sleep(poll_s)
            latest = signature(path)
            if latest != now:  # still being written: wait for it to settle again
                now = latest
                settled_at = asyncio.get_running_loop().time() + debounce_s
        seen = now
        if now is None:
            continue  # gone (mid-rename, or deleted): the file that comes back reloads
        changed(f"{path} changed")
