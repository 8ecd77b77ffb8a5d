"""The new config of a reload, loaded and checked whole before anything changes."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from slm_server.auth.rules import key_problems
from slm_server.config import ConfigError, LoadedConfig, Problem, load_config
from slm_server.router.errors import InvalidRequest, RouterError

log = logging.getLogger(__name__)


class ConfigRejected(InvalidRequest):
    """The new config has errors: nothing was changed. Its envelope lists them in
    ``error.problems`` too, one line each, as ``check-config`` prints them."""

    code = "invalid_config"

    def __init__(self, path: Path, problems: list[str]) -> None:
        listed = "; ".join(problems)
        super().__init__(f"{path}: {len(problems)} error(s), the running config stays: {listed}")
        self.problems = problems

    def body(self) -> bytes:
        return json.dumps({"error": {**self.error_object(), "problems": self.problems}}).encode()


class ReloadBusy(RouterError):
    status = 409
    code = "reload_in_progress"


def checked_config(
    path: Path, environ: Mapping[str, str], *, lenient: bool = False
) -> LoadedConfig:
    """``path`` loaded, if it has no error (as ``serve`` would refuse to start on); else
    ConfigRejected, its errors logged. Warnings are logged and do not stop it.

    ``lenient``: the check's findings (paths, ports...) are warnings, as ``router`` takes
    them; only an unusable file or unusable API keys are errors."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        errors: list[Problem] = list(exc.problems)
    else:
        keys = key_problems(loaded, environ)
        found = [*loaded.problems, *keys]
        fatal = keys if lenient else found
        for problem in found:
            if problem.severity == "warning" or problem not in fatal:
                log.warning("%s", problem)
        errors = [problem for problem in fatal if problem.severity == "error"]
    if errors:
        for problem in errors:
            log.error("%s", problem)
        log.error("%s: %d error(s); the config was not reloaded", path, len(errors))
        raise ConfigRejected(path, [str(problem) for problem in errors])
    return loaded
