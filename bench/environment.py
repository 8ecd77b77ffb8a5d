"""What the figures were measured on: machine, pinning and versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from bench.nginx import nginx_version
from bench.results import Settings
from bench.wrk import wrk_version

_REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(_REPO), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    # Uncommitted changes under src/ change what is measured: say so.
    return revision + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# Above this (per CPU) other work competes with the measured processes.
_BUSY_LOAD_PER_CPU = 0.3


def busy_warning() -> str | None:
    """A warning when the machine was busy before the benchmark started."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load / cpus <= _BUSY_LOAD_PER_CPU:
        return None
    return (
        f"load average {load:.2f} on {cpus} CPUs before the start: other processes "
        "compete for the pinned CPUs, so absolute figures are low and noisy"
    )


def describe(settings: Settings) -> dict[str, str]:
    pinning = (
        "none (fewer than 2 CPUs usable)"
        if settings.proxy_cpu is None
        else f"proxy under test on CPU {settings.proxy_cpu}, "
        f"backend and load generators on CPU {settings.load_cpu}"
    )
    described = {
        "cpus": f"{os.cpu_count()} ({_cpu_model()})",
        "pinning": pinning,
        "python": platform.python_version(),
        "slm-server": f"{_version('slm-server')} (git {_git_revision()})",
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        "nginx": nginx_version(),
        "wrk": wrk_version(),
        "load average at start": load_average(),
    }
    warning = busy_warning()
    if warning is not None:
        described["WARNING"] = warning
    return described
