"""``GET /ui`` (the dashboard's page) and ``GET /admin/status`` (what it shows).

The status is the health report of each backend (what ``/v1/backends/health`` answers),
with each model's figures over the last minutes and the router's own: uptime, version,
memory. With keys, only an admin key may read it (the app checks): it holds every
model's traffic figures and the last lines of the backends' logs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from slm_server import __version__
from slm_server.admin.page import PAGE_PATHS, page_file
from slm_server.admin.sampler import BOUNDS, Sampler
from slm_server.admin.window import Figures, Window
from slm_server.auth import Grant
from slm_server.router.asgi import Send, send_json, send_response
from slm_server.router.errors import MethodNotAllowed
from slm_server.router.metrics.tallies import RequestTallies

STATUS_PATH = "/admin/status"
DASHBOARD_PATHS = PAGE_PATHS | {STATUS_PATH}

_MB = 10**6  # decimal, like the health report's memory_mb
_RUNNING = frozenset({"starting", "ready", "stopping"})  # states that hold memory

# Role -> health report, of the backends ``grant`` may see.
HealthReports = Callable[[Grant | None], Awaitable[Mapping[str, Mapping[str, Any]]]]


class Dashboard:
    """Serves the page and its data for one router app.

    ``health``: the backends' health reports as ``/v1/backends/health`` gives them to a
    grant; ``tallies`` and ``budget_bytes`` are read on each use (a reload may replace
    them); ``runs_backends``: this router starts and stops its backends (``serve``);
    ``processes``: the backends it runs, by role (kept up to date by config reloads).
    """

    def __init__(
        self,
        health: HealthReports,
        tallies: Callable[[], RequestTallies],
        budget_bytes: Callable[[], int | None],
        *,
        runs_backends: bool,
        started_at: float,
        processes: Mapping[str, object] | None = None,
        window: Window | None = None,
    ) -> None:
        self._health = health
        self._budget_bytes = budget_bytes
        self.runs_backends = runs_backends
        self._processes: Mapping[str, object] = {} if processes is None else processes
        self.started_at = started_at
        self.sampler = Sampler(tallies, window or Window())

    async def answer(self, method: str, path: str, grant: Grant | None, send: Send) -> None:
        """Answer a request to one of DASHBOARD_PATHS."""
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{path} takes GET, not {method}", allow="GET, HEAD")
        if path == STATUS_PATH:
            await send_json(send, 200, await self.status(grant))
        else:
            page = page_file(path)
            await send_response(send, 200, page.body, page.headers)

    async def status(self, grant: Grant | None) -> dict[str, Any]:
        reports = await self._health(grant)
        window = self.sampler.window
        now = self.sampler.take()
        by_model = window.figures(now, BOUNDS)
        base = window.baseline(now.at)
        models = [
            {
                **_model(role, report, by_model.get(report.get("model_id", ""))),
                **control(role, report, self._processes, runs_backends=self.runs_backends),
            }
            for role, report in reports.items()
        ]
        budget = self._budget_bytes()
        return {
            "version": __version__,
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "window_s": window.length_s,
            # Shorter than the window while the router is younger than it.
            "window_covered_s": 0.0 if base is None else round(now.at - base.at, 1),
            # Load, unload and restart need a router that runs its backends (and each
            # model says whether it runs it: see ``control``).
            "runs_backends": self.runs_backends,
            "memory": {
                "budget_mb": None if budget is None else round(budget / _MB),
                **_memory(models),
            },
            "models": models,
        }


def control(
    role: str, report: Mapping[str, Any], processes: Mapping[str, object], *, runs_backends: bool
) -> dict[str, Any]:
    """Whether the page offers load, unload and restart for ``role`` (``controllable``;
    if not, ``control_note`` says why in a few words) and its log (``has_log``): both only
    for a backend this router runs. The router would refuse the others anyway (a server
    elsewhere, a router that runs none: 400; a disabled model: 404)."""
    if role in processes:
        return {"controllable": True, "control_note": None, "has_log": True}
    if not runs_backends:
        note = "started and stopped elsewhere: this router (`slm-server router`) only routes"
    elif report.get("status") == "disabled":
        note = "disabled in the config"
    elif report.get("base_url"):
        note = f"runs elsewhere, at {report['base_url']}"
    else:
        note = "not run by this router"
    return {"controllable": False, "control_note": note, "has_log": False}


def _memory(models: list[dict[str, Any]]) -> dict[str, int]:
    """What the running models take: ``used_mb`` measured, ``estimated_mb`` the estimates
    of those not measured yet (just started). The page's memory bar shows the same."""
    used = estimated = 0
    for model in models:
        if model["memory_mb"] is not None:
            used += model["memory_mb"]
        elif model["state"] in _RUNNING:
            estimated += model.get("memory_estimate_mb") or 0
    return {"used_mb": used, "estimated_mb": estimated}


def _model(role: str, report: Mapping[str, Any], figures: Figures | None) -> dict[str, Any]:
    model: dict[str, Any] = {"role": role, **report}
    model.setdefault("state", report.get("status"))  # a router that runs no backends
    model.setdefault("memory_mb", None)
    # The newest problem: the process's own reason (why it failed, what it waits for),
    # else what the health probe found.
    model["last_error"] = report.get("reason") or report.get("error")
    idle_since = report.get("idle_since")
    model["idle_s"] = None if idle_since is None else round(time.time() - idle_since, 1)
    if figures is not None:
        for name, value in dataclasses.asdict(figures).items():
            if name != "span_s":
                model[name] = None if value is None else round(value, 4)
    return model
