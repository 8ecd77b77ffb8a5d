"""Which CPU this is, for keys of what is built for it or proven to run on it."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]  # as /proc/cpuinfo names them; empty where unknown

    @property
    def identity(self) -> str:
        """The model name and a digest of the feature flags: VMs of one model can differ."""
        digest = hashlib.sha256(" ".join(sorted(self.flags)).encode()).hexdigest()[:12]
        return f"{self.model} [{digest}]"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags from the text of /proc/cpuinfo."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = value
        if not line.strip() and model and flags:
            break  # the end of the first processor's block
    return CpuInfo(model=model or platform.machine(), flags=frozenset(flags.split()))


@functools.cache
def this_cpu() -> CpuInfo:
    if _CPUINFO.is_file():
        return parse_cpuinfo(_CPUINFO.read_text(errors="replace"))
    try:  # macOS
        brand = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        brand = ""
    return CpuInfo(model=brand or platform.processor() or platform.machine(), flags=frozenset())
