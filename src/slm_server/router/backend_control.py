"""``POST /v1/backends/{role}/load``, ``/unload`` and ``/restart``: an operator starts,
stops or restarts a model."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from slm_server.router.errors import BackendTimeout, RoleNotFound
from slm_server.router.turns import refusal_error, start_failed
from slm_server.scheduler.decisions import RefuseReason
from slm_server.scheduler.owner import Scheduler
from slm_server.scheduler.waiters import Refused
from slm_server.supervisor import BackendFailed, BackendProcess

PREFIX = "/v1/backends/"
ACTIONS = frozenset({"load", "unload", "restart"})


def control_target(path: str) -> tuple[str, str] | None:
    """(role, action) for a load, unload or restart path, else None."""
    if not path.startswith(PREFIX):
        return None
    role, _, action = path[len(PREFIX) :].rpartition("/")
    if not role or action not in ACTIONS:
        return None
    return role, action


async def load(
    scheduler: Scheduler, processes: Mapping[str, BackendProcess], role: str, timeout_s: float
) -> None:
    """Start ``role``'s backend as a request would (making room first), at once even if it
    failed within its cooldown; return once it is ready."""
    label = _label(processes, role)
    try:
        async with asyncio.timeout(timeout_s):
            waiter = scheduler.enqueue(role, forced=True)
            try:
                await waiter.granted
                # Looked up once let in: a reload may have replaced the process meanwhile
                # (the old one is stopped for good), or removed the role.
                process = processes.get(role)
                if process is None:
                    raise removed(role)
                label = _label(processes, role)
                # Still a demand while it loads: the backend is not evicted for another
                # model before this call has seen it ready.
                await process.ensure_ready()
            finally:
                scheduler.leave(waiter)
    except Refused as refused:
        if refused.reason is RefuseReason.REMOVED:
            raise removed(role) from None
        raise refusal_error(label, refused) from None
    except BackendFailed as exc:
        raise start_failed(label, exc) from None
    except TimeoutError:
        raise BackendTimeout(f"{label} was not ready within {timeout_s:g}s") from None


async def restart(
    scheduler: Scheduler, processes: Mapping[str, BackendProcess], role: str, timeout_s: float
) -> None:
    """Stop ``role``'s backend as ``unload`` does (its requests in flight finish first,
    within the unload grace), then start it again as ``load`` does (within ``timeout_s``):
    through the scheduler, so the memory budget holds. A stopped or failed backend is
    just started."""
    await scheduler.unload(role)
    await load(scheduler, processes, role, timeout_s)


def _label(processes: Mapping[str, BackendProcess], role: str) -> str:
    process = processes.get(role)
    return f"'{role}' ({process.entry.id})" if process is not None else f"'{role}'"


def removed(role: str) -> RoleNotFound:
    return RoleNotFound(f"'{role}' was removed from the config by a reload")


def removed_report(process: BackendProcess) -> dict[str, Any]:
    """The unload call's answer for a role a reload removed: it is stopped (and forgotten)
    whatever the call does, so it answers as an unloaded backend of its last config."""
    entry = process.entry
    report = {
        "status": "unloaded",
        "model_id": entry.id,
        "backend": entry.backend,
        "port": entry.port,
        "model_type": entry.model_type,
        **process.snapshot(),
    }
    return as_unloaded(report)


# What a running backend's health entry has that an unloaded one's does not.
_RUNNING_ONLY = ("error", "reason", "log_tail", "retry_in_s")


def as_unloaded(report: dict[str, Any]) -> dict[str, Any]:
    """The unload call's answer: ``report`` as it was when the stop completed.

    A request (or a load call) that arrived meanwhile may already be starting the backend
    again by the time the answer is built; the caller asked whether its unload happened,
    and ``/v1/backends/health`` tells the state from then on.
    """
    if report.get("state") == "unloaded":
        return report
    unloaded = {key: value for key, value in report.items() if key not in _RUNNING_ONLY}
    unloaded.update(status="unloaded", state="unloaded", pid=None, memory_mb=None)
    return unloaded
