"""The long-running commands: ``serve`` (backends + router) and ``backends`` (backends only)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

from slm_server import backends
from slm_server.auth.variables import key_variables
from slm_server.config import LoadedConfig, ModelEntry
from slm_server.router.serve import is_loopback, run_uvicorn
from slm_server.scheduler.fit_rules import memory_problems
from slm_server.supervisor import Launcher, Supervisor

log = logging.getLogger(__name__)


def make_supervisor(config: LoadedConfig) -> Supervisor:
    warn_of_open_backends(config)
    supervisor = Supervisor(config, launcher_for(config), config.base_dir / "logs")
    supervisor.launcher_for = launcher_for  # a reloaded config's keys are kept from backends too
    return supervisor


def launcher_for(config: LoadedConfig) -> Launcher:
    """How ``config``'s backends are started: without the variables holding the router's
    secrets (its API keys, the Responses store's password)."""
    settings = config.file.router
    removed = key_variables(settings.api_keys)
    if settings.response_store_password_env is not None:  # the router's alone, like the keys
        removed |= {settings.response_store_password_env}

    def launch(role: str, entry: ModelEntry) -> backends.LaunchSpec:
        return dataclasses.replace(
            backends.launch_spec(entry, config.base_dir), env_removed=removed
        )

    return launch


def warn_of_open_backends(config: LoadedConfig) -> None:
    """Log a warning for each enabled backend that other machines can reach."""
    # With API keys, a backend others can reach is a way around them: said all the more.
    around = ", around the router's API keys" if config.file.router.api_keys else ""
    for role, entry in config.models.items():
        if entry.enabled and entry.started_here and not is_loopback(entry.host):
            log.warning(
                "%s: the backend listens on %s:%d, reachable from other machines without "
                "authentication%s; set `host: 127.0.0.1` to keep it local",
                role,
                entry.host or "*",
                entry.port,
                around,
            )


def run_serve(
    config: LoadedConfig,
    *,
    host: str | None,
    port: int | None,
    log_level: str,
    watch_config: bool = False,
) -> int:
    """Backends and router in one process; uvicorn's shutdown stops the backends."""
    # Said, not refused: the other models serve; one that can never load gets a 503 saying so.
    for problem in memory_problems(config):
        log.log(logging.ERROR if problem.severity == "error" else logging.WARNING, "%s", problem)
    supervisor = make_supervisor(config)
    return run_uvicorn(
        config, supervisor, host=host, port=port, log_level=log_level, watch_config=watch_config
    )


def run_backends(config: LoadedConfig) -> int:
    """Start every enabled backend, report readiness, keep them up until SIGINT/SIGTERM."""
    settings = config.file.router
    lifecycle = [
        role
        for role, entry in config.models.items()
        if entry.enabled and (entry.on_demand or entry.idle_ttl_s is not None)
    ]
    if lifecycle or settings.memory_budget_gb is not None or settings.max_loaded_models:
        # Starting on demand and making room need the router, which sees the requests.
        log.warning(
            "`backends` starts every enabled entry and keeps it running: on_demand, "
            "idle_ttl_s, memory_budget_gb and max_loaded_models apply under `serve` only"
        )
    return asyncio.run(_backends(make_supervisor(config)))


async def _backends(supervisor: Supervisor) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor.start_all()
    try:
        waiting = asyncio.ensure_future(supervisor.wait_all())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            report_outcomes(waiting.result())
        else:
            waiting.cancel()
        await stopping
    finally:
        log.info("stopping all backends")
        await supervisor.stop_all()
    return 0


def report_outcomes(outcomes: dict[str, str | None]) -> None:
    for role, failure in outcomes.items():
        if failure is None:
            log.info("%s: ready", role)
        else:
            log.error("%s: failed: %s", role, failure)
    ready = sum(1 for failure in outcomes.values() if failure is None)
    log.info("%d of %d backend(s) ready", ready, len(outcomes))
