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
        """A process for ``role``, not started and not among ``processes`` yet.

        Its log is the one of the process already writing the same file, if any (a model
        changed by a config reload, its id kept): one writer per file, and those who
        follow it see the new process's lines after the old one's."""
        path = self._log_dir / log_file_name(entry)
        kept = (p.log for p in self.processes.values() if p.log.path == path)
        log = next(kept, None) or BackendLog(path)

        def launch() -> LaunchSpec:
            return self.launcher(role, entry)

        return BackendProcess(role, entry, launch, log, self.policy)

    def put(self, role: str, process: BackendProcess) -> None:
        """``process`` runs ``role`` from now on (a config reload added or replaced it)."""
        old = self.processes.get(role)
        self.processes[role] = process
        if old is not None and old.log is not process.log:
            self._end_log(
                old,
                f"{role} was changed by a config reload and now logs to {process.log.path.name}",
            )

    def forget(self, role: str) -> None:
        """``role``, stopped, is no longer configured."""
        old = self.processes.pop(role, None)
        if old is not None:
            self._end_log(old, f"{role} was removed from the config by a reload")

    def _end_log(self, process: BackendProcess, why: str) -> None:
        """End ``process``'s log for its followers, unless another process writes it on."""
        if all(other.log is not process.log for other in self.processes.values()):
            process.log.end(why)

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
