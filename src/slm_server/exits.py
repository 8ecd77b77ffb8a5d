"""Why a process ended, in words a user understands: ``killed by SIGILL (...)``, not ``-4``."""

from __future__ import annotations

import signal

# What each signal usually means when it ends a model server, and what to do about it.
_MEANINGS: dict[signal.Signals, str] = {
    signal.SIGILL: "illegal instruction: {program} was built for CPU features this machine "
    "cannot run",
    signal.SIGKILL: "often the out-of-memory killer: the model may need more memory than is free",
    signal.SIGSEGV: "segmentation fault: a crash inside {program}",
    signal.SIGBUS: "bus error: often a model file that changed or was truncated while mapped",
    signal.SIGABRT: "aborted: {program} hit an internal error; its last output says which",
    signal.SIGFPE: "arithmetic error: a crash inside {program}",
    signal.SIGTERM: "asked to stop by another process",
    signal.SIGINT: "interrupted",
    signal.SIGHUP: "its terminal went away",
}
# Where the fix for a CPU mismatch is described, for the programs the project builds.
_SIGILL_HINT = {"llama-server": '; see README "Building llama-server"'}


def exit_signal(code: int, *, shell_convention: bool = False) -> signal.Signals | None:
    """The signal that ended a process with exit status ``code``, if one did.

    Python reports death by signal N as ``-N``; a parent that passes its child's status on
    as its own exit status (a shell, the watchdog) reports ``128 + N``.
    """
    number = -code if code < 0 else code - 128 if shell_convention and code > 128 else None
    if number is None:
        return None
    try:
        return signal.Signals(number)
    except ValueError:
        return None


def describe_exit(code: int, program: str, *, shell_convention: bool = False) -> str:
    """``exited with code 3``, or ``killed by SIGILL (illegal instruction: ...)``."""
    sig = exit_signal(code, shell_convention=shell_convention)
    if sig is None:
        return f"exited with code {code}"
    meaning = _MEANINGS.get(sig)
    if meaning is None:
        return f"killed by {sig.name}"
    text = meaning.format(program=program)
    if sig is signal.SIGILL:
        text += _SIGILL_HINT.get(program, "")
    return f"killed by {sig.name} ({text})"
