"""The numbers the policy plans with: the memory budget and each entry's need, in bytes."""

from __future__ import annotations

from pathlib import Path

import psutil

from slm_server.backends.memory_estimate import estimate_bytes
from slm_server.config import ModelEntry

GB = 10**9

# `memory_budget_gb: auto` leaves this much of physical memory to the system, the router
# and whatever else runs: a tenth of it, and never less than 2 GB (a small machine's
# desktop and browser take about that).
AUTO_RESERVE_FRACTION = 0.10
AUTO_RESERVE_MIN_BYTES = 2 * GB


def auto_budget_bytes(physical_bytes: int) -> int:
    """What `auto` means on a machine with ``physical_bytes`` of memory."""
    reserve = max(AUTO_RESERVE_MIN_BYTES, int(physical_bytes * AUTO_RESERVE_FRACTION))
    return max(0, physical_bytes - reserve)


def budget_bytes(setting: float | str | None, physical_bytes: int | None = None) -> int | None:
    """``router.memory_budget_gb`` in bytes; None: no budget."""
    if setting is None:
        return None
    if setting == "auto":
        total = physical_bytes if physical_bytes is not None else psutil.virtual_memory().total
        return auto_budget_bytes(total)
    return int(float(setting) * GB)


def need_bytes(entry: ModelEntry, base_dir: Path) -> int | None:
    """What ``entry``'s backend needs before it is measured: ``memory_gb`` if set, else the
    estimate from its files; None when neither is known (weights not on this machine).

    Blocking (it reads the model's files): call it in a thread. None too for a server
    slm_server does not run: it takes none of this machine's memory.
    """
    if not entry.started_here:
        return None
    if entry.memory_gb is not None:
        return int(entry.memory_gb * GB)
    return estimate_bytes(entry, base_dir)
