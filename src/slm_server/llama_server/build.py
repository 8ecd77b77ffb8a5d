"""Compile llama-server from the pinned sources into the cache, showing progress.

Only the ``llama-server`` target is built, as one static binary, and kept under its key
(sources, flags, CPU baseline): a later install, another clone or a CI run on the same
kind of CPU reuses it, and nothing built for one CPU is reused on another unless its
baseline says it may be.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from slm_server.llama_server import source
from slm_server.llama_server.cache import Layout
from slm_server.llama_server.files import locked, write_atomic
from slm_server.llama_server.recipe import LLAMA_CPP, TARGET, Recipe, Source, cache_key

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 2 * 3600.0  # a 2-core machine takes 10-20 min; beyond this, something hangs
_COMPILER_MEMORY_BYTES = 600 * 2**20  # llama.cpp's largest files take ~350-500 MB each to compile
_PROGRESS_STEP = 5  # percent
_PROGRESS_EVERY_S = 60.0  # also report this often, so a long file never looks like a hang
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")
_LOG_TAIL_LINES = 30


class BuildError(Exception):
    """The build failed; the message names the step and where its full log is."""


@dataclass(frozen=True)
class Built:
    binary: Path
    key: str
    reused: bool
    seconds: float = 0.0


def default_jobs() -> int:
    """One compiler per CPU, as many as the free memory holds."""
    by_memory = psutil.virtual_memory().available // _COMPILER_MEMORY_BYTES
    return max(1, min(os.cpu_count() or 1, int(by_memory)))


def find_cmake() -> str:
    """cmake on PATH, else the one the ``llamacpp`` extra installs beside this Python."""
    found = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if found is None:
        raise BuildError(
            "cmake not found: `uv sync --extra llamacpp` installs it (or apt-get install cmake, "
            "brew install cmake)"
        )
    return found


def build(
    recipe: Recipe,
    layout: Layout,
    *,
    rebuild: bool = False,
    jobs: int | None = None,
    pinned: Source = LLAMA_CPP,
) -> Built:
    """The binary for ``recipe``: the kept one, or a new build. Marks it current either way."""
    key = cache_key(recipe, pinned)
    layout.builds.mkdir(parents=True, exist_ok=True)
    # Two installs at once build once; the second waits, then reuses.
    waiting = f"waiting for another build of {TARGET} to finish (lock: {layout.builds}/.build.lock)"
    with locked(layout.builds / ".build.lock", waiting):
        binary = layout.binary(key)
        if binary.is_file() and not rebuild:
            _make_current(layout, key)
            return Built(binary, key, reused=True)
        started = time.monotonic()
        _remove_leftovers(layout)
        _build_into(recipe, layout, key, jobs or default_jobs(), pinned)
        _make_current(layout, key)
        return Built(binary, key, reused=False, seconds=time.monotonic() - started)


def _build_into(recipe: Recipe, layout: Layout, key: str, jobs: int, pinned: Source) -> None:
    cmake = find_cmake()
    archive = source.fetch(pinned, layout.sources)
    log_path = layout.build_log(key)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=layout.builds))
    try:
        tree = source.unpack(pinned, archive, work / "src")
        build_dir = work / "build"
        log.info(
            "building %s for %s with %d job(s); full log: %s",
            TARGET,
            recipe.baseline,
            jobs,
            log_path,
        )
        with log_path.open("wb", buffering=0) as build_log:  # readable while it runs
            configure = [cmake, "-S", str(tree), "-B", str(build_dir), *recipe.cmake_args]
            _run(configure, build_log, log_path, "configuring")
            compile_ = [cmake, "--build", str(build_dir), "--target", TARGET, "-j", str(jobs)]
            _run(compile_, build_log, log_path, "compiling")
        produced = build_dir / "bin" / TARGET
        if not produced.is_file():
            raise BuildError(f"the build finished but made no {produced}; see {log_path}")
        staged = work / "install"
        staged.mkdir()
        shutil.copy2(produced, staged / TARGET)
        about = {
            "source": pinned.name,
            "source_sha256": pinned.sha256,
            "cmake_args": list(recipe.cmake_args),
            "baseline": recipe.baseline,
            "platform": recipe.platform,
            "compiler_env": list(recipe.compiler_env),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / "build.json").write_text(json.dumps(about, indent=2) + "\n")
        final = layout.build_dir(key)
        shutil.rmtree(final, ignore_errors=True)  # a rebuild replaces the old one
        staged.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: Sequence[str], build_log: IO[bytes], log_path: Path, step: str) -> None:
    """Run one build step, its output to the log, its progress (``[ 42%]``) to the user.

    Progress shows every 5%, and at least once a minute while the compiler works on one
    large file and prints nothing, so the build never looks hung.
    """
    build_log.write(f"$ {' '.join(argv)}\n".encode())
    started = time.monotonic()
    deadline = started + BUILD_TIMEOUT_S
    reported, reported_at, now = -_PROGRESS_STEP, started, started
    lines: queue.Queue[bytes | None] = queue.Queue()  # None: the output has ended
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: make and the compilers go with it
    ) as proc:
        reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, min(_PROGRESS_EVERY_S, deadline - now)))
                except queue.Empty:
                    line = b""
                now = time.monotonic()
                if line is None:
                    break
                if now > deadline:
                    raise BuildError(
                        f"{step} {TARGET} took over {BUILD_TIMEOUT_S:g}s; stopped. See {log_path}"
                    )
                build_log.write(line)
                match = _PERCENT.match(line)
                percent = int(match.group(1)) if match else None
                stepped = percent is not None and percent >= reported + _PROGRESS_STEP
                if stepped or now - reported_at >= _PROGRESS_EVERY_S:
                    if percent is not None:
                        shown = f"{percent}%"
                    else:
                        shown = "still working" if reported < 0 else f"{reported}%, still working"
                    log.info("%s %s: %s (%s)", step, TARGET, shown, _elapsed(now - started))
                    reported_at = now
                    if percent is not None:
                        reported = percent
        except BaseException:
            # A timeout, Ctrl-C, a full disk: end every compiler it started, not only cmake.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            reader.join(timeout=10)  # the pipe ends once the whole group is gone
        code = proc.wait()
    build_log.flush()
    if code != 0:
        tail = _tail(log_path)
        raise BuildError(f"{step} {TARGET} failed (exit {code}); see {log_path}:\n{tail}")


def _read_lines(proc: subprocess.Popen[bytes], into: queue.Queue[bytes | None]) -> None:
    assert proc.stdout is not None
    with contextlib.suppress(ValueError, OSError):  # closed under it: the step was stopped
        for line in proc.stdout:
            into.put(line)
    into.put(None)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _tail(path: Path) -> str:
    lines = path.read_bytes().decode(errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _remove_leftovers(layout: Layout) -> None:
    """What an interrupted build left (killed outright, its cleanup never ran)."""
    for leftover in layout.builds.glob(".build-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for partial in layout.sources.glob("*.part-*"):
        partial.unlink(missing_ok=True)


def _make_current(layout: Layout, key: str) -> None:
    write_atomic(layout.current, key + "\n")
