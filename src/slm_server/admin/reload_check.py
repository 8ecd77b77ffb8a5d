"""The new config of a reload, loaded and checked whole before anything changes."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from slm_server.config import ConfigError, LoadedConfig, Problem, load_config
from slm_server.config_checks import config_problems, router_problems
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
) -> tuple[LoadedConfig, list[Problem]]:
    """``path`` loaded, if ``check-config`` finds no error in it, and its warnings (logged
    too); else ConfigRejected, its errors logged. Blocking: run it in a thread.

    ``lenient``: for a router whose backends run elsewhere (``slm-server router``), which
    starts on a file whose paths and ports are checked where they run: only an unusable
    file, API keys or Responses store are errors; the rest are warnings."""
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        errors: list[Problem] = list(exc.problems)
        warnings: list[Problem] = []
    else:
        found = config_problems(loaded, environ, runs_backends=not lenient)
        fatal = router_problems(loaded, environ) if lenient else found
        errors = [problem for problem in fatal if problem.severity == "error"]
        warnings = [problem for problem in found if problem not in errors]
        for problem in warnings:
            log.warning("%s", problem)
    if errors:
        for problem in errors:
            log.error("%s", problem)
        log.error("%s: %d error(s); the config was not reloaded", path, len(errors))
        raise ConfigRejected(path, [str(problem) for problem in errors])
    return loaded, warnings
