"""Ends a backend when the supervisor dies, on systems whose kernel will not.

On Linux the kernel kills each backend when the supervisor dies
(``prctl(PR_SET_PDEATHSIG)``, see ``orphans.py``), even a SIGKILLed supervisor
that runs no cleanup. macOS has nothing like it, so there every backend runs
under this watchdog::

    python -I watchdog.py PARENT_PID [--stop-signal N] -- ARGV...

It runs ARGV in the process group it leads and exits with ARGV's exit status
(128 + N after signal N). Once PARENT_PID is no longer its parent it
terminates the group: the stop signal (signal number N, SIGTERM by default),
then SIGKILL. SIGTERM or SIGINT sent to the watchdog goes on to the group as
the stop signal.

One runs per backend, so it imports only light parts of the standard library.
The supervisor runs it by file name with ``-I`` rather than with ``-m``:
importing its package first would load the whole supervisor (the HTTP client and all).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from types import FrameType

# No portable event says "your parent died" (kqueue could, on macOS only), so poll.
PARENT_POLL_S = 0.2
KILL_AFTER_S = 5.0  # orphaned: SIGTERM -> SIGKILL
USAGE = "usage: python -I watchdog.py PARENT_PID [--stop-signal N] -- ARGV..."


def main(args: list[str]) -> int:
    stop = signal.SIGTERM
    if len(args) > 3 and args[1] == "--stop-signal" and args[2].isdigit():
        stop = signal.Signals(int(args[2]))
        args = [args[0], *args[3:]]
    if len(args) < 3 or not args[0].isdigit() or args[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    parent, argv = int(args[0]), args[2:]
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # we signal our whole group: it must not be our caller's
    # Signals (SIGCHLD included) write to this pipe, so the wait below wakes at once.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    asked: list[int] = []

    def ask(signum: int, frame: FrameType | None) -> None:
        asked.append(signum)

    signal.signal(signal.SIGTERM, ask)
    signal.signal(signal.SIGINT, ask)
    if stop is not signal.SIGKILL:
        # It reaches this process too, which leads the group; unhandled, SIGQUIT or SIGHUP
        # would end the watchdog before the backend.
        signal.signal(stop, ask)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    if os.getppid() != parent:
        return 1  # orphaned before the backend even started: do not start it
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        print(f"watchdog: cannot start {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    return _watch(child, parent, asked, wake_r, stop)


def _watch(
    child: subprocess.Popen[bytes],
    parent: int,
    asked: list[int],
    wake_r: int,
    stop: signal.Signals,
) -> int:
    term_sent_at: float | None = None
    while True:
        code = child.poll()
        orphaned = os.getppid() != parent
        if code is not None:
            if orphaned:
                _signal_group(signal.SIGKILL)  # nobody else will end what it left behind
            return 128 - code if code < 0 else code
        if term_sent_at is None:
            if asked or orphaned:
                _signal_group(stop)
                term_sent_at = time.monotonic()
        # Only when orphaned: otherwise the supervisor applies its own grace period.
        elif orphaned and time.monotonic() - term_sent_at > KILL_AFTER_S:
            _signal_group(signal.SIGKILL)
        select.select([wake_r], [], [], PARENT_POLL_S)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 512)


def _signal_group(sig: signal.Signals) -> None:
    """Signal the backend and whatever it started (and this process, which leads the group)."""
    os.killpg(os.getpid(), sig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
