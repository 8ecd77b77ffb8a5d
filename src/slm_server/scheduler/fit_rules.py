"""What check-config says about the memory budget and max_loaded_models: which entries can
never load, and which will not all start at launch.

The rules are the policy's own (``policy.never_fits``), applied to the config before
anything runs: an entry fits only in the budget less every other pinned entry's need, and
only in a place under max_loaded_models that the pinned entries leave free. A need is what
the policy plans with before it measures: ``memory_gb``, else the estimate from the files;
an unknown need counts as 0 until the backend has run and been measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from slm_server.config import LoadedConfig, ModelEntry, Problem
from slm_server.scheduler.budget import budget_bytes, need_bytes
from slm_server.scheduler.decisions import gigabytes


@dataclass(frozen=True, slots=True)
class Budget:
    """The memory budget in bytes, and physical memory when it is `auto` (so that every
    message shows what auto came to on this machine)."""

    limit_bytes: int
    auto_of_bytes: int | None = None

    def __str__(self) -> str:
        if self.auto_of_bytes is None:
            return f"the memory budget of {gigabytes(self.limit_bytes)}"
        auto = f"auto: {gigabytes(self.limit_bytes)} of {gigabytes(self.auto_of_bytes)}"
        return f"the memory budget ({auto})"


def fit_problems(
    entries: Mapping[str, ModelEntry],
    needs: Mapping[str, int | None],
    budget: Budget | None,
    cap: int | None,
    file: Path,
) -> list[Problem]:
    """The problems of ``entries`` (role -> entry) under ``budget`` and ``cap``
    (max_loaded_models); ``needs`` maps a role to its need in bytes, None when unknown.
    Disabled entries, and those whose server runs elsewhere, count for nothing."""
    enabled = {
        role: entry for role, entry in entries.items() if entry.enabled and entry.started_here
    }
    pinned = [role for role, entry in enabled.items() if entry.pinned]
    problems: list[Problem] = []
    if budget is not None:
        problems.extend(_memory_problems(enabled, needs, pinned, budget, file))
    if cap is not None:
        problems.extend(_count_problems(enabled, pinned, cap, file))
    # Past an error about the pinned entries as a whole, what launch starts is moot: the
    # entries it could not start would never load at all, not wait for a first request.
    if not any(p.severity == "error" and p.role is None for p in problems):
        problems.extend(_launch_problems(enabled, needs, budget, cap, file))
    return problems


def memory_problems(config: LoadedConfig) -> list[Problem]:
    """:func:`fit_problems` for a loaded config, for ``check-config``.

    Blocking: it reads each enabled model's file header to estimate its need (only when a
    memory budget is set).
    """
    router = config.file.router
    budget: Budget | None = None
    needs: dict[str, int | None] = {}
    if router.memory_budget_gb is not None:
        physical = psutil.virtual_memory().total
        limit = budget_bytes(router.memory_budget_gb, physical)
        assert limit is not None  # a budget is set
        budget = Budget(limit, physical if router.memory_budget_gb == "auto" else None)
        needs = {
            role: need_bytes(entry, config.base_dir)
            for role, entry in config.models.items()
            if entry.enabled and entry.started_here
        }
    return fit_problems(config.models, needs, budget, router.max_loaded_models, config.path)


def need_note(entry: ModelEntry, need: int | None) -> str:
    """`memory_gb 9.3 GB`, `est. 9.3 GB` or `0 GB until measured`: which number is used."""
    if need is None:
        return "0 GB until measured"
    if entry.memory_gb is not None:
        return f"memory_gb {gigabytes(need)}"
    return f"est. {gigabytes(need)}"


def _memory_problems(
    enabled: Mapping[str, ModelEntry],
    needs: Mapping[str, int | None],
    pinned: Sequence[str],
    budget: Budget,
    file: Path,
) -> list[Problem]:
    problems: list[Problem] = []
    for role, entry in enabled.items():
        if needs.get(role) is None:
            why = (
                "a command's server is not one whose files slm-server can read"
                if entry.backend == "command"
                else "no weights on this machine to estimate it from"
            )
            message = (
                f"its memory need is unknown ({why}) while a memory budget is set: set "
                "memory_gb; until it has run and been measured it counts as 0 GB"
            )
            problems.append(Problem("warning", file, role, entry.id, "memory_gb", message))
    pinned_total = sum(needs.get(role) or 0 for role in pinned)
    pinned_overflow = len(pinned) > 1 and pinned_total > budget.limit_bytes
    if pinned_overflow:
        listed = ", ".join(
            f"{role} ({need_note(enabled[role], needs.get(role))})" for role in pinned
        )
        message = (
            f"the pinned entries {listed} together need {gigabytes(pinned_total)}, more than "
            f"{budget}: none of them can ever load"
        )
        problems.append(Problem("error", file, None, None, None, message))
    for role, entry in enabled.items():
        if pinned_overflow and role in pinned:
            continue  # the one problem above names them all
        need = needs.get(role)
        held = sum(needs.get(other) or 0 for other in pinned if other != role)
        if (need or 0) <= budget.limit_bytes - held:
            continue
        less = f" less {gigabytes(held)} for pinned entries" if held else ""
        message = f"needs {need_note(entry, need)}, more than {budget}{less}: it can never load"
        field = "memory_gb" if entry.memory_gb is not None else None
        problems.append(Problem("error", file, role, entry.id, field, message))
    return problems


def _count_problems(
    enabled: Mapping[str, ModelEntry], pinned: Sequence[str], cap: int, file: Path
) -> list[Problem]:
    names = ", ".join(pinned)
    if len(pinned) > cap:
        message = (
            f"max_loaded_models is {cap}, fewer than the {len(pinned)} pinned entries "
            f"({names}): no entry can ever load"
        )
        return [Problem("error", file, None, None, "router.max_loaded_models", message)]
    unpinned = [role for role in enabled if role not in pinned]
    if unpinned and len(pinned) + 1 > cap:
        taken = (
            f"the pinned entry {names} takes"
            if len(pinned) == 1
            else f"the {len(pinned)} pinned entries ({names}) take"
        )
        message = (
            f"max_loaded_models is {cap} and {taken} every place: "
            f"{', '.join(unpinned)} can never load"
        )
        return [Problem("error", file, None, None, "router.max_loaded_models", message)]
    return []


def _launch_problems(
    enabled: Mapping[str, ModelEntry],
    needs: Mapping[str, int | None],
    budget: Budget | None,
    cap: int | None,
    file: Path,
) -> list[Problem]:
    at_launch = [role for role, entry in enabled.items() if not entry.on_demand]
    if len(at_launch) < 2:
        return []  # one entry either fits or can never load, which is an error of its own
    total = sum(needs.get(role) or 0 for role in at_launch)
    over: list[str] = []
    if budget is not None and total > budget.limit_bytes:
        over.append(f"need {gigabytes(total)} together, more than {budget}")
    if cap is not None and len(at_launch) > cap:
        over.append(f"outnumber max_loaded_models ({cap})")
    if not over:
        return []
    message = (
        f"the {len(at_launch)} entries started at launch ({', '.join(at_launch)}) "
        f"{', and '.join(over)}: not all of them will be started at launch; those that do "
        "not fit start on their first request, once idle ones make room (on_demand: true "
        "on an entry says it may wait for its first request)"
    )
    return [Problem("warning", file, None, None, None, message)]
