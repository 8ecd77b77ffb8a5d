"""Keeping backend processes from outliving the supervisor, even a SIGKILLed one."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1

# "1": run backends under the watchdog on Linux as well, where PR_SET_PDEATHSIG
# would do; so that the watchdog, which macOS depends on, can be tested there.
WATCHDOG_ENV = "SLM_SERVER_ORPHAN_WATCHDOG"


def uses_watchdog() -> bool:
    """Whether backends are guarded by the watchdog rather than by the kernel."""
    return not sys.platform.startswith("linux") or os.environ.get(WATCHDOG_ENV) == "1"


def guarded_argv(
    argv: Sequence[str],
    *,
    force_watchdog: bool = False,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> list[str]:
    """``argv``, under the watchdog where it is needed (see ``uses_watchdog``).

    The watchdog ends the backend once this process is gone, and turns the SIGTERM it
    is sent into ``stop_signal`` for the backend. It is run by file name in isolated
    mode (``-I``): ``-m`` would first import this package, and with it the rest of
    the supervisor, once per backend.
    """
    if not (force_watchdog or uses_watchdog()):
        return list(argv)
    # Imported here: imported with the package, ``python -m`` on it would warn.
    from slm_server.supervisor import watchdog

    guard = [sys.executable, "-I", watchdog.__file__, str(os.getpid())]
    if stop_signal is not signal.SIGTERM:
        guard += ["--stop-signal", str(int(stop_signal))]
    return [*guard, "--", *argv]


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``): it is the one mechanism that
    still works when the supervisor itself is SIGKILLed and runs no cleanup.
    Elsewhere there is no such hook and ``None`` is returned: there the
    watchdog (``guarded_argv``) stands in.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook
