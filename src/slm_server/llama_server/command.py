"""``slm-server build-llama-server``: build or reuse llama-server for this CPU, then check it."""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import signal
import sys
from pathlib import Path

from slm_server.llama_server.build import BuildError, build
from slm_server.llama_server.cache import Layout
from slm_server.llama_server.check import NO_CHECK_MODEL, ensure_checked
from slm_server.llama_server.cpu import this_cpu
from slm_server.llama_server.locate import REBUILD_ADVICE
from slm_server.llama_server.recipe import COMPILER_ENV, missing_cpu_flags, recipe_for
from slm_server.llama_server.source import SourceError

log = logging.getLogger(__name__)


def run_build(*, rebuild: bool, jobs: int | None) -> int:
    """0 when a llama-server that passed its check on this CPU is ready to use."""
    # A CI timeout or `kill` ends the build like Ctrl-C: the compilers stop, the tree goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    layout = Layout.here()
    cpu = this_cpu()
    on_path = shutil.which("llama-server")
    if on_path and not rebuild:
        verdict = ensure_checked(Path(on_path), layout)
        if verdict is None or verdict.ok:
            log.info("using the llama-server on PATH (%s); nothing to build", on_path)
            return 0
        log.warning("not using %s; building one", verdict.describe())
    extra_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    compiler_env = {name: os.environ.get(name, "") for name in COMPILER_ENV}
    recipe = recipe_for(
        platform.system(), platform.machine(), cpu.identity, extra_args, compiler_env
    )
    missing = missing_cpu_flags(recipe, cpu.flags)
    if missing:
        log.error(
            "this CPU (%s) lacks %s, which the portable %s build needs; build for this CPU "
            "alone with CMAKE_ARGS=-DGGML_NATIVE=ON",
            cpu.model,
            ", ".join(sorted(missing)),
            recipe.baseline,
        )
        return 1
    try:
        built = build(recipe, layout, rebuild=rebuild, jobs=jobs)
    except (BuildError, SourceError, OSError) as exc:
        log.error("%s", exc)
        return 1
    if built.reused:
        log.info("llama-server for %s is already built: %s", recipe.baseline, built.binary)
    else:
        log.info("built %s in %.0fs", built.binary, built.seconds)
    verdict = ensure_checked(built.binary, layout, fresh=rebuild)
    if verdict is None:
        log.warning("%s is not checked: %s", built.binary, NO_CHECK_MODEL)
        return 0
    if not verdict.ok:
        log.error("%s; %s", verdict.describe(), REBUILD_ADVICE)
        return 1
    log.info("%s", verdict.describe())
    return 0
