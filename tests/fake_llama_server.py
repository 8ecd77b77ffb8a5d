"""A stand-in for ``llama-server``, put first on PATH for ``serve`` in tests.

It takes llama-server's command line, uses only ``--host`` and ``--port``, and runs the
fake backend there with the flags in ``$SLM_TEST_FAKE_BACKEND_ARGS`` (for slow streams,
say). The fake answers llama-server's ``/completion``, so it passes serve's check.
"""

from __future__ import annotations

import argparse
import os
import runpy
import stat
import sys
from pathlib import Path

ARGS_ENV = "SLM_TEST_FAKE_BACKEND_ARGS"
_FAKE_BACKEND = Path(__file__).with_name("fake_backend.py")


def install(bin_dir: Path) -> Path:
    """A ``llama-server`` in ``bin_dir`` that runs this; returns ``bin_dir`` (for PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "llama-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    extra = os.environ.get(ARGS_ENV, "").split()
    sys.argv = [str(_FAKE_BACKEND), "--host", args.host, "--port", str(args.port), *extra]
    runpy.run_path(str(_FAKE_BACKEND), run_name="__main__")


if __name__ == "__main__":
    main()
