"""Where built binaries, downloaded sources and check results are kept.

``$SLM_SERVER_CACHE``, else ``$XDG_CACHE_HOME/slm_server``, else ``~/.cache/slm_server``::

    sources/<archive>                   downloaded once, verified by its sha256
    llama-server/<key>/llama-server     one build per key (sources, flags, CPU baseline)
    llama-server/<key>/build.json       how it was built
    llama-server/current                the key of the build to use
    llama-server/checks/<hash>.json     a binary's check result on one CPU
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slm_server.llama_server.recipe import TARGET

CACHE_ENV = "SLM_SERVER_CACHE"


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "slm_server"


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def here(cls) -> Layout:
        return cls(cache_root())

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def builds(self) -> Path:
        return self.root / "llama-server"

    def build_dir(self, key: str) -> Path:
        return self.builds / key

    def binary(self, key: str) -> Path:
        return self.build_dir(key) / TARGET

    def build_log(self, key: str) -> Path:
        return self.builds / f"{key}.log"

    @property
    def current(self) -> Path:
        return self.builds / "current"

    @property
    def checks(self) -> Path:
        return self.builds / "checks"

    def current_binary(self) -> Path | None:
        """The binary the last successful build installed, if it is still there."""
        try:
            key = self.current.read_text().strip()
        except OSError:
            return None
        binary = self.binary(key) if key and "/" not in key else None
        return binary if binary is not None and binary.is_file() else None
