"""Applying a config reload to a running router: only what changed is touched.

The new config is checked whole first (see reload_check); then every change is made in
one synchronous step, so a request sees either the old state or the new one, never a
mix: the routing table (unchanged and updated roles keep their Backend object, with its
slots, queue and requests in flight), the API keys and the other router settings, the
metrics' models, and the scheduler's and supervisor's roles. What takes time (draining
and stopping removed or replaced backends) follows, and the reload answers once it is
done, within ``router.shutdown_grace_s`` plus the backends' stop grace.

A replaced role is drained, then stopped, then started again with its new config (not
side by side): the two would often need the same port, and both at once could exceed
the memory budget. Its requests meanwhile wait for it within their deadline, as for a
model that is loading.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from slm_server.admin.log_stream import KEYS_CHANGED_NOTE
from slm_server.admin.reload_check import ReloadBusy, checked_config
from slm_server.admin.reload_plan import (
    ReloadPlan,
    RoleChange,
    changed_fields,
    held_by_stopping,
    plan_reload,
    role_change,
)
from slm_server.config import LoadedConfig, ModelEntry
from slm_server.router.errors import RouterError
from slm_server.router.routing import Backend, RoutingTable
from slm_server.scheduler.budget import budget_bytes, need_bytes
from slm_server.supervisor import BackendProcess

if TYPE_CHECKING:
    from slm_server.router.app import RouterApp

log = logging.getLogger(__name__)

# What each change does, as the log line for the role says it.
_SAID = {
    "unchanged": "unchanged, left as it is",
    "added": "added: started now if it fits, else by its first request",
    "removed": "removed: takes no new requests; stopped once those in flight are done",
    "replaced": "changed: stopped once its requests are done, then started with its new config",
    "updated": "updated in place (router-side settings only), its backend left running",
}


class Reloader:
    """Reloads ``app``'s config file, one reload at a time."""

    def __init__(self, app: RouterApp) -> None:
        self._app = app
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def reload(self, *, wait: bool = False) -> dict[str, Any]:
        """Reload now; the answer says what happened to each role and router setting.

        ConfigRejected (nothing changed) if the file has errors. If another reload is
        under way: ReloadBusy, or with ``wait`` this one follows it (a reload is bounded:
        by the drain's grace and the backends' stop grace)."""
        if self._lock.locked() and not wait:
            raise ReloadBusy("a config reload is under way already; try again once it is done")
        async with self._lock:
            app = self._app
            path = app.config.path
            log.info("reloading the config from %s", path)
            # `slm-server router` starts on a file whose model paths are elsewhere: so it
            # reloads one, too.
            new, warnings = await asyncio.to_thread(
                checked_config, path, os.environ, lenient=app.supervisor is None
            )
            plan = plan_reload(app.config.file, new.file)
            old_models = app.config.models
            needs = await asyncio.to_thread(_needs, new, plan)
            waits, to_launch, deferred = self._switch(new, plan, needs)
            if "api_keys" in plan.router_changed:
                # A follow goes on as long as its client stays: one opened with a key now
                # revoked (or with none, before keys were asked for) must not.
                app.log_streams.end_following(KEYS_CHANGED_NOTE)
            for role, change in plan.roles.items():
                if change != "unchanged" or role in app.table.backends:
                    said = _said(change, old_models.get(role), new.models.get(role))
                    log.info("reload: %s: %s", role, said)
            if plan.router_changed:
                log.info("reload: router settings changed: %s", ", ".join(plan.router_changed))
            if plan.restart_needed:
                log.warning(
                    "reload: %s changed, which takes effect only when the server is "
                    "restarted; the running server keeps the old value",
                    ", ".join(f"router.{name}" for name in plan.restart_needed),
                )
            await asyncio.gather(*waits)
            answer = plan.as_answer()
            if app.scheduler is not None:
                # Removed and replaced models have stopped: what did not fit before may now.
                deferred = {**deferred, **app.scheduler.launch(to_launch)}
                answer["launch"] = launch_outcomes(app.processes, to_launch, deferred)
            log.info("config reloaded from %s", path)
            # What check-config warns of, one line each as it prints them.
            answer["warnings"] = [str(problem) for problem in warnings]
            return answer

    async def reload_asked(self) -> None:
        """A reload a signal or a change of the file asked for: after any under way, its
        outcome logged (the answer goes to no one)."""
        try:
            await self.reload(wait=True)
        except RouterError as error:  # the file's errors are logged already
            log.warning("config not reloaded: %s", error.message)
        except Exception:  # a bug: the running config stays, and the next change tries again
            log.exception("config reload failed")

    def _switch(
        self, new: LoadedConfig, plan: ReloadPlan, needs: dict[str, int | None]
    ) -> tuple[list[Awaitable[None]], list[str], dict[str, str]]:
        """Every change, in one step (no await); what remains to wait for, the roles to
        start once it is done if they could not start now, and why those could not."""
        app = self._app
        settings = new.file.router
        old = app.table.backends
        kept: dict[str, Backend] = {}
        for role, change in plan.roles.items():
            if change in ("unchanged", "updated") and role in old and role in new.models:
                kept[role] = old[role]
        # The kept backends take their entries once it is built; the groups that stay keep
        # their balancers (cooldowns, sessions).
        table = RoutingTable(new, kept, kept_groups=app.table.groups)
        for backend in kept.values():
            backend.gate.set_max_waiting(settings.max_queue)

        waits, to_launch, deferred = self._switch_backends(new, plan, table, needs)

        app.config = new
        app.table = table
        # Idle connections to servers no backend is at any longer would stay open for good.
        app.pool.close_idle_except(table.addresses())
        app.apply_settings(new)
        app.metrics.follow(table.model_ids, table.backends)
        return waits, to_launch, deferred

    def _switch_backends(
        self,
        new: LoadedConfig,
        plan: ReloadPlan,
        table: RoutingTable,
        needs: dict[str, int | None],
    ) -> tuple[list[Awaitable[None]], list[str], dict[str, str]]:
        """The scheduler's and the supervisor's part of ``_switch``."""
        app = self._app
        scheduler, supervisor = app.scheduler, app.supervisor
        if scheduler is None or supervisor is None:
            return [], [], {}  # `slm-server router`: the backends run elsewhere
        settings = new.file.router
        if supervisor.launcher_for is not None:
            supervisor.launcher = supervisor.launcher_for(new)
        scheduler.configure(
            budget_bytes=budget_bytes(settings.memory_budget_gb),
            max_loaded=settings.max_loaded_models,
            unload_grace_s=settings.shutdown_grace_s,
            max_waiting=settings.max_queue
            + max((b.entry.max_concurrency for b in table.backends.values()), default=1),
        )
        old = app.config.models
        # What happens to each process: a server elsewhere has none to start or stop.
        changes: dict[str, RoleChange] = {
            role: role_change(_run_here(old.get(role)), _run_here(new.models.get(role)))
            for role in plan.roles
        }
        # A new backend whose port or log file a stopping one still holds starts after it.
        held = held_by_stopping(old, new.models, changes)
        waits: list[Awaitable[None]] = []
        to_launch: list[str] = []
        for role, change in changes.items():
            entry = new.models.get(role)
            if change == "added":
                assert entry is not None
                process = supervisor.new_process(role, entry)
                supervisor.put(role, process)
                app.load.renew(role, needs.get(role))
                scheduler.add(role, entry, process, table.backends[role], held.get(role, ()))
                to_launch.append(role)
            elif change == "updated":
                assert entry is not None
                supervisor.processes[role].entry = entry
                scheduler.update(role, entry)
                if "memory_gb" in changed_fields(old[role], entry):
                    app.load.renew(role, needs.get(role), measured_too=False)
                if old[role].on_demand and not entry.on_demand:
                    to_launch.append(role)
            elif change == "removed":
                forgotten = functools.partial(supervisor.forget, role)
                waits.append(scheduler.remove(role, forgotten))
            elif change == "replaced":
                assert entry is not None
                process = supervisor.new_process(role, entry)

                def swapped(role: str = role, process: BackendProcess = process) -> None:
                    supervisor.put(role, process)
                    app.load.renew(role, needs.get(role))

                backend = table.backends[role]
                after = held.get(role, ())
                waits.append(scheduler.replace(role, entry, process, backend, swapped, after))
                to_launch.append(role)  # started once in place; said in the answer
        return waits, to_launch, scheduler.launch(to_launch)


def launch_outcomes(
    processes: Mapping[str, BackendProcess], roles: Sequence[str], deferred: Mapping[str, str]
) -> dict[str, str]:
    """What became of each of ``roles`` (added, replaced, or no longer on demand) by the
    time the reload answers: ``ready``, ``starting``, ``failed: why``, ``on demand`` (its
    first request starts it), or ``deferred: why`` (no room yet; its first request starts
    it once idle models make room)."""
    outcomes: dict[str, str] = {}
    for role in roles:
        process = processes.get(role)
        if process is None:
            continue
        if process.state == "failed":
            outcomes[role] = f"failed: {process.reason or 'unknown'}"
        elif process.state in ("starting", "ready"):
            outcomes[role] = process.state
        elif role in deferred:
            outcomes[role] = f"deferred: {deferred[role]}"
        else:
            outcomes[role] = "on demand" if process.entry.on_demand else "stopped"
    return outcomes


def _said(change: RoleChange, old: ModelEntry | None, new: ModelEntry | None) -> str:
    """What became of a role, as its reload log line says it: a server elsewhere is not
    started nor stopped, only pointed at."""
    if new is not None and not new.started_here and change in ("added", "replaced"):
        said = f"now points at {new.server_url}"
        if old is not None and old.started_here:
            said += "; the server run here for it stops once its requests are done"
        return said
    if change == "removed" and old is not None and not old.started_here:
        return "removed: takes no new requests"
    if change == "added" and new is not None and new.on_demand:
        return "added: on demand, started by its first request"
    return _SAID[change]


def _run_here(entry: ModelEntry | None) -> ModelEntry | None:
    """``entry`` if slm_server runs its server, else None (as if it were not configured)."""
    return entry if entry is not None and entry.started_here else None


def _needs(new: LoadedConfig, plan: ReloadPlan) -> dict[str, int | None]:
    """The memory needs of the roles that run anew or were given a new ``memory_gb``
    (reading GGUF headers: in a thread)."""
    needs: dict[str, int | None] = {}
    for role, change in plan.roles.items():
        if change in ("added", "replaced", "updated") and new.models[role].started_here:
            needs[role] = need_bytes(new.models[role], new.base_dir)
    return needs
