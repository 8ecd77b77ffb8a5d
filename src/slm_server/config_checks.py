"""Everything ``check-config`` says about a config, and so a config reload too.

One list, so that a reload refuses what ``check-config`` calls an error (a pinned set that
can never fit, a missing llama-server, an unset key or store variable) and says what it
calls a warning.
"""

from __future__ import annotations

from collections.abc import Mapping

from slm_server.auth.rules import key_problems
from slm_server.backends import installation_problems, openai
from slm_server.config import LoadedConfig, Problem
from slm_server.scheduler.fit_rules import memory_problems
from slm_server.stores.rules import store_problems


def config_problems(
    loaded: LoadedConfig, environ: Mapping[str, str], *, runs_backends: bool = True
) -> list[Problem]:
    """The problems of ``loaded``, variables read from ``environ``.

    ``runs_backends``: False for a router whose backends run elsewhere (``slm-server
    router``): what this machine lacks to start them, and their memory, do not apply.
    Blocking: it looks for programs and reads model file headers."""
    problems = list(loaded.problems)
    if runs_backends:
        problems += installation_problems(loaded)
        problems += memory_problems(loaded)
    else:  # servers elsewhere are reached from here all the same: their keys and CA files
        problems += openai.setup_problems(loaded, environ)
    return [*problems, *key_problems(loaded, environ), *store_problems(loaded, environ)]


def router_problems(loaded: LoadedConfig, environ: Mapping[str, str]) -> list[Problem]:
    """What keeps a router from serving ``loaded`` at all, whoever runs the backends: its
    API keys and its Responses store."""
    return [*key_problems(loaded, environ), *store_problems(loaded, environ)]
