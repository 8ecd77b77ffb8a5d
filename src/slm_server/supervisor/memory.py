"""The memory a running backend takes: its whole process tree, measured.

Resident set size (RSS), summed over the tree. A model's weights are mapped from its
file, and their pages count once they have been read (for a server that has answered,
all of them). RSS counts them in full for each process that maps them, which is what
each backend needs to run whoever else maps the same file; it errs high (safe for a
budget) only when two backends share a file. Proportional set size (PSS) would split
those pages between the sharers, so one backend's figure would halve when a twin
started and double when it stopped: it errs low, and the scheduler would plan with a
number that changes under it. Unique set size (USS) would leave shared weights out
altogether. Within one tree (a watchdog and its server) RSS counts shared libraries
twice, a few MB. And RSS is one cheap read per process (no walk of the memory map).
"""

from __future__ import annotations

import psutil


def tree_memory_bytes(pid: int) -> int | None:
    """The memory of ``pid`` and all its descendants; None when ``pid`` is gone.

    Blocking (it reads the process table): call it in a thread.
    """
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # ended meanwhile, or not ours to read: it holds nothing of ours
            if process is root:
                return None
    return total


class PeakMemory:
    """The highest measurement of one backend's process since it was started."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self.peak_bytes: int | None = None

    def record(self, pid: int, measured: int | None) -> int | None:
        """Take a measurement of the process ``pid``; the peak of that process so far.

        Another PID (the backend was started again) forgets the old process's peak.
        """
        if pid != self._pid:
            self._pid, self.peak_bytes = pid, None
        if measured is not None and (self.peak_bytes is None or measured > self.peak_bytes):
            self.peak_bytes = measured
        return self.peak_bytes
