"""Probing backends for ``/v1/backends/health``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Literal

from slm_server.router.proxy import connect_failure
from slm_server.router.routing import Backend
from slm_server.supervisor.process import BackendProcess
from slm_server.upstream import ConnectFailed, UpstreamError, UpstreamPool

HealthStatus = Literal[
    "healthy", "unreachable", "timeout", "unhealthy", "error", "disabled", "unloaded"
]


async def probe(
    pool: UpstreamPool,
    backend: Backend,
    probe_timeout_s: float,
    process: BackendProcess | None = None,
) -> dict[str, Any]:
    """One backend's health report: status, model_id, backend, port, and error text if any.

    A backend this router runs is probed where its supervisor checks readiness (not every
    server has ``/health``), and is never ``healthy`` before its supervisor calls it ready:
    some servers answer their health check before the model has loaded.
    """
    entry = backend.entry
    report: dict[str, Any] = {
        "status": "disabled",
        "model_id": entry.id,
        "backend": entry.backend,
        "port": entry.port,
        "model_type": entry.model_type,
    }
    if not entry.started_here:
        report["base_url"] = entry.server_url
    if not entry.enabled:
        return report
    if backend.unusable is not None:
        report.update(status="error", error=backend.unusable)
        return report
    if process is not None and process.state == "stopped":
        report["status"] = "unloaded"  # by design: it starts on demand; nothing to probe
        return report
    if process is not None:
        path = process.health_path
    elif backend.remote is not None:
        path = backend.remote.health_path
    else:
        path = "/health"
    status, error, http_status = await _probe_status(pool, backend, path, probe_timeout_s)
    if process is None and path == "/health" and http_status == HTTPStatus.NOT_FOUND:
        # A server run elsewhere, without /health (llama_cpp.server): up if it lists models.
        status, error, _ = await _probe_status(pool, backend, "/v1/models", probe_timeout_s)
    if status == "healthy" and process is not None and process.state != "ready":
        why = f": {process.reason}" if process.reason else ""
        status, error = "unhealthy", f"answers on {path} but is {process.state}{why}"
    report["status"] = status
    if backend.remote is not None:
        backend.probed_up = status == "healthy"
        backend.probed_at = asyncio.get_running_loop().time()
    if error is not None:
        report["error"] = error
    return report


async def _probe_status(
    pool: UpstreamPool, backend: Backend, path: str, probe_timeout_s: float
) -> tuple[HealthStatus, str | None, int | None]:
    """The status, the error text if any, and the HTTP status if the backend answered."""
    entry, remote = backend.entry, backend.remote
    try:
        async with asyncio.timeout(probe_timeout_s):
            if remote is None:
                url = entry.server_url + path
                status, body = await pool.get(entry.connect_host, entry.local_port, path)
            else:
                where = remote.url
                target = where.target(path)
                url = where.origin + target
                status, body = await pool.get(
                    where.host, where.port, target, remote.headers, tls=remote.tls
                )
    except TimeoutError:
        return "timeout", f"no answer from {url} within {probe_timeout_s:g}s", None
    except ConnectFailed as exc:
        if remote is not None:
            return "unreachable", f"{url}: {connect_failure(exc, elsewhere=True)}", None
        return "unreachable", connect_failure(exc), None
    except UpstreamError as exc:
        return "error", f"{url}: {exc}", None
    if status == HTTPStatus.OK:
        return "healthy", None, status
    said = f"{url} answered " if remote is not None else ""  # which of its paths, elsewhere
    return "unhealthy", f"{said}HTTP {status}: {_error_text(body)}", status


def _error_text(body: bytes) -> str:
    """The backend's own message when it sent an error envelope, else the raw text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:200]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return body.decode(errors="replace")[:200]


async def probe_all(
    pool: UpstreamPool,
    backends: Mapping[str, Backend],
    probe_timeout_s: float,
    processes: Mapping[str, BackendProcess],
) -> dict[str, dict[str, Any]]:
    roles = list(backends)
    probes = (probe(pool, backends[r], probe_timeout_s, processes.get(r)) for r in roles)
    reports = await asyncio.gather(*probes)
    return dict(zip(roles, reports, strict=True))
