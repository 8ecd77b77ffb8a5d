"""All backend processes of a config, started and stopped together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from slm_server.backends.spec import LaunchSpec
from slm_server.config import LoadedConfig, ModelEntry
from slm_server.supervisor.logs import BackendLog, log_file_name
from slm_server.supervisor.process import BackendFailed, BackendProcess, RestartPolicy

Launcher = Callable[[str, ModelEntry], LaunchSpec]


class Supervisor:
    """Owns one :class:`BackendProcess` per enabled entry whose server runs here."""

    def __init__(
        self,
        config: LoadedConfig,
        launcher: Launcher,
        log_dir: Path,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.launcher = launcher
        # How a reloaded config's backends are started; None: as before (``launcher``).
        self.launcher_for: Callable[[LoadedConfig], Launcher] | None = None
        self._log_dir = log_dir
        self.processes: dict[str, BackendProcess] = {}
        for role, entry in config.models.items():
            if entry.enabled and entry.started_here:
                self.processes[role] = self.new_process(role, entry)

    def new_process(self, role: str, entry: ModelEntry) -> BackendProcess:
        """A process for ``role``, not started and not among ``processes`` yet."""
        log = BackendLog(self._log_dir / log_file_name(entry.id))

        def launch() -> LaunchSpec:
            return self.launcher(role, entry)

        return BackendProcess(role, entry, launch, log, self.policy)

    def put(self, role: str, process: BackendProcess) -> None:
        """``process`` runs ``role`` from now on (a config reload added or replaced it)."""
        self.processes[role] = process

    def forget(self, role: str) -> None:
        """``role``, stopped, is no longer configured."""
        self.processes.pop(role, None)

    def start_all(self) -> None:
        for process in self.processes.values():
            process.start()

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes.values()))

    async def wait_all(self) -> dict[str, str | None]:
        """Wait until every backend is ready or failed: role -> None or the reason."""

        async def outcome(process: BackendProcess) -> str | None:
            try:
                await process.ensure_ready()
            except BackendFailed as exc:
                return str(exc)
            return None

        roles = list(self.processes)
        results = await asyncio.gather(*(outcome(self.processes[r]) for r in roles))
        return dict(zip(roles, results, strict=True))
