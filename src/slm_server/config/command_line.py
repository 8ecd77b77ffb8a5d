"""A ``backend: command`` entry's own command line: its placeholders and its stop signal.

Pure functions on strings, shared by the schema (which refuses what could never run) and
the backend (which fills the placeholders in when it starts the command).
"""

from __future__ import annotations

import signal
import string
from collections.abc import Iterable, Mapping

# What ``{name}`` in a command stands for; the values come from the entry's own fields.
PLACEHOLDERS = ("port", "host", "model_path", "id", "context_length")

# Signals a server can be asked to stop with. The others (SIGSTOP, SIGCHLD, SIGWINCH, ...)
# do not end a process by default, so a stop would always run into the SIGKILL deadline.
STOP_SIGNALS = frozenset(
    {"SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2"}
)

_BRACE_HINT = "write {{ and }} for a brace the program should see, as in JSON"


class CommandLineError(ValueError):
    """An argument of ``command`` names no known placeholder, or is not well formed."""


def placeholders(arg: str) -> list[str]:
    """The placeholder names ``arg`` uses, in order; CommandLineError for an unknown one."""
    try:
        parts = list(string.Formatter().parse(arg))
    except ValueError:
        raise CommandLineError(f"{arg!r} has an unmatched brace; {_BRACE_HINT}") from None
    names: list[str] = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{known}}}" for known in PLACEHOLDERS)
            raise CommandLineError(
                f"unknown placeholder {{{name}}} in {arg!r}; known: {known}; {_BRACE_HINT}"
            )
        if spec or conversion:
            raise CommandLineError(f"write {{{name}}} in {arg!r} without a format or conversion")
        names.append(name)
    return names


def used_placeholders(argv: Iterable[str]) -> set[str]:
    """Every placeholder the command line uses; CommandLineError for an unknown one."""
    return {name for arg in argv for name in placeholders(arg)}


def fill_in(argv: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """``argv`` with each ``{name}`` replaced by ``values[name]`` and ``{{``/``}}`` unescaped."""
    return [arg.format_map(values) for arg in argv]


def stop_signal_name(value: str) -> str:
    """``value`` as a signal's full name (``int``, ``SIGint`` -> ``SIGINT``), or ValueError."""
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in STOP_SIGNALS or not hasattr(signal, name):
        allowed = ", ".join(sorted(STOP_SIGNALS))
        raise ValueError(f"{value!r} is not a signal that stops a server; one of: {allowed}")
    return name


def stop_signal(name: str) -> signal.Signals:
    """The signal a validated ``stop_signal`` names."""
    return signal.Signals[stop_signal_name(name)]
