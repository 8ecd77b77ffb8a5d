"""Probing backends for ``/v1/backends/health``."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from slm_server.router.proxy import connect_failure
from slm_server.router.routing import Backend
from slm_server.upstream import ConnectFailed, UpstreamError, UpstreamPool

HealthStatus = Literal["healthy", "unreachable", "timeout", "unhealthy", "error", "disabled"]


async def probe(pool: UpstreamPool, backend: Backend, probe_timeout_s: float) -> dict[str, Any]:
    """One backend's health report: status, model_id, backend, port, and error text if any."""
    entry = backend.entry
    report: dict[str, Any] = {
        "status": "disabled",
        "model_id": entry.id,
        "backend": entry.backend,
        "port": entry.port,
        "model_type": entry.model_type,
    }
    if not entry.enabled:
        return report
    status, error = await _probe_status(pool, backend, "/health", probe_timeout_s)
    report["status"] = status
    if error is not None:
        report["error"] = error
    return report


async def _probe_status(
    pool: UpstreamPool, backend: Backend, path: str, probe_timeout_s: float
) -> tuple[HealthStatus, str | None]:
    entry = backend.entry
    url = entry.base_url + path
    try:
        async with asyncio.timeout(probe_timeout_s):
            status, body = await pool.get(entry.connect_host, entry.port, path)
    except TimeoutError:
        return "timeout", f"no answer from {url} within {probe_timeout_s:g}s"
    except ConnectFailed as exc:
        return "unreachable", connect_failure(exc)
    except UpstreamError as exc:
        return "error", f"{url}: {exc}"
    if status == 200:
        return "healthy", None
    return "unhealthy", f"HTTP {status}: {_error_text(body)}"


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
    pool: UpstreamPool, backends: dict[str, Backend], probe_timeout_s: float
) -> dict[str, dict[str, Any]]:
    roles = list(backends)
    reports = await asyncio.gather(*(probe(pool, backends[r], probe_timeout_s) for r in roles))
    return dict(zip(roles, reports, strict=True))
