"""The pinned llama.cpp sources: downloaded once, verified, unpacked for a build."""

from __future__ import annotations

import logging
import os
import tarfile
import urllib.request
from pathlib import Path

from slm_server.llama_server.files import sha256_of
from slm_server.llama_server.recipe import Source

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60  # per network read: a stalled download fails instead of hanging


class SourceError(Exception):
    """The sources could not be fetched or do not match their pinned hash."""


def fetch(source: Source, directory: Path) -> Path:
    """The verified archive in ``directory``, downloaded if it is not there yet."""
    archive = directory / source.url.rsplit("/", 1)[-1]
    if archive.is_file() and sha256_of(archive) == source.sha256:
        return archive
    directory.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f"{archive.name}.part-{os.getpid()}")
    try:
        _download(source, partial)
        digest = sha256_of(partial)
        if digest != source.sha256:
            raise SourceError(
                f"{source.url} has sha256 {digest}, not the pinned {source.sha256}; "
                "nothing was built from it"
            )
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
    return archive


def unpack(source: Source, archive: Path, into: Path) -> Path:
    """Extract only the llama.cpp tree of ``archive`` into ``into``; its path."""
    prefix = source.tree.rstrip("/") + "/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise SourceError(f"{archive.name} has no {source.tree}/")
        # The "data" filter refuses absolute paths, links out of the tree and device files;
        # Python before 3.11.4 has no filters, and the archive's hash is pinned anyway.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)
    return into / source.tree


def _download(source: Source, to: Path) -> None:
    megabytes = source.size_bytes / 1e6
    log.info("downloading %s (%.0f MB) from %s", source.name, megabytes, source.url)
    try:
        with urllib.request.urlopen(source.url, timeout=_TIMEOUT_S) as response, to.open("wb") as f:
            done, next_report = 0, 0.25
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if done >= next_report * source.size_bytes:
                    log.info("downloaded %.0f of %.0f MB", done / 1e6, megabytes)
                    next_report += 0.25
    except OSError as exc:  # URLError, timeouts and disk errors are all OSErrors
        raise SourceError(f"cannot download {source.url}: {exc}") from exc
