"""Backend process lifecycle: one owner task per backend process."""

from slm_server.supervisor.process import BackendFailed, BackendProcess, RestartPolicy
from slm_server.supervisor.supervisor import Launcher, Supervisor

__all__ = ["BackendFailed", "BackendProcess", "Launcher", "RestartPolicy", "Supervisor"]
