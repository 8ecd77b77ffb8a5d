"""Which llama-server the llama.cpp backend runs: the first one that passes its check here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from slm_server.llama_server.cache import Layout
from slm_server.llama_server.check import NO_CHECK_MODEL, Verdict, ensure_checked

log = logging.getLogger(__name__)

REBUILD_ADVICE = (
    "rebuild it for this machine with `uv run slm-server build-llama-server --rebuild` "
    '(see README "Building llama-server")'
)


class LlamaServerUnusable(Exception):
    """Every llama-server found failed its check on this CPU; the message says what to do."""


def candidates(layout: Layout) -> list[Path]:
    """A llama-server on PATH first (e.g. Homebrew's), then the one built into the cache."""
    found: list[Path] = []
    on_path = shutil.which("llama-server")
    if on_path:
        found.append(Path(on_path))
    built = layout.current_binary()
    if built is not None and built not in found:
        found.append(built)
    return found


def usable_llama_server(layout: Layout | None = None) -> Path | None:
    """The first candidate that passed its check (or could not be checked: no test model).

    None when there is no llama-server at all; LlamaServerUnusable when every one failed.
    """
    layout = layout or Layout.here()
    failed: list[tuple[Path, Verdict]] = []
    for binary in candidates(layout):
        verdict = ensure_checked(binary, layout)
        if verdict is None:
            log.warning("using %s unchecked: %s", binary, NO_CHECK_MODEL)
        if verdict is None or verdict.ok:
            for _, why in failed:
                log.warning("not using %s", why.describe())
            return binary
        failed.append((binary, verdict))
    if not failed:
        return None
    raise LlamaServerUnusable(
        "; ".join(_advice(binary, verdict, layout) for binary, verdict in failed)
    )


def _advice(binary: Path, verdict: Verdict, layout: Layout) -> str:
    if binary == layout.current_binary():
        return f"{verdict.describe()}; {REBUILD_ADVICE}"
    return f"{verdict.describe()}; it is on PATH: remove it from PATH or replace it"
