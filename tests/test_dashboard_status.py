"""``GET /admin/status`` (the dashboard's data) and ``GET /ui`` (its page), in process."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config_builder import entry, make_config
from net import free_port
from on_demand_serving import Launcher, model, serving
from slm_server import __version__
from slm_server.admin.dashboard import Dashboard, control
from slm_server.auth import Grant
from slm_server.router.access_log import ACCESS_LOGGER
from slm_server.router.app import RouterApp
from slm_server.router.metrics.tallies import RequestTallies

ALICE = "alice-key-0123456789"
OPS = "ops-key-0123456789"
_IMPORT = re.compile(r'^import .* from "(/ui/[a-z]+\.js)";$', re.M)  # a module's imports


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _by_role(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["role"]: m for m in status["models"]}


def _stream(model_id: str) -> dict[str, Any]:
    return {
        "model": model_id,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_the_status_shows_each_model_with_its_state_and_its_recent_figures(
    tmp_path: Path,
) -> None:
    models = {"chat": model("chat", on_demand=False), "spare": model("spare")}
    launcher = Launcher({"chat": ["--chunks", "4"]})
    async with serving(tmp_path, models, launcher, memory_budget_gb=4) as served:
        pid = await served.ready("chat")
        for _ in range(3):
            answer = await served.client.post("/v1/chat/completions", json=_stream("m-chat"))
            assert answer.status_code == 200, answer.text
        response = await served.client.get("/admin/status")
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["version"] == __version__
    assert status["runs_backends"] is True
    assert status["memory"]["budget_mb"] == 4000
    assert status["window_s"] == 300
    chat, spare = _by_role(status)["chat"], _by_role(status)["spare"]
    assert (chat["model_id"], chat["state"], chat["on_demand"]) == ("m-chat", "ready", False)
    assert chat["pid"] == pid and chat["restarts"] == 0
    assert chat["requests_per_min"] > 0
    assert chat["latency_p50_s"] > 0 and chat["latency_p95_s"] >= chat["latency_p50_s"]
    assert chat["ttfb_p50_s"] > 0
    assert chat["tokens_per_s"] > 0  # the fake reports usage at the end of each stream
    assert status["memory"]["used_mb"] == chat["memory_mb"] > 0
    assert status["memory"]["estimated_mb"] == 0  # spare is not loaded: it takes nothing
    # An unloaded on-demand model is listed too, with the memory it will need.
    assert (spare["state"], spare["on_demand"], spare["memory_mb"]) == ("unloaded", True, None)
    assert spare["memory_estimate_mb"] == 1000
    assert spare["requests_per_min"] == 0 and spare["latency_p50_s"] is None


async def test_only_the_models_this_router_runs_are_controllable_and_have_a_log(
    tmp_path: Path,
) -> None:
    models = {
        "chat": model("chat"),
        "remote": {
            "id": "m-remote",
            "backend": "openai",
            "base_url": "http://gpu-1.invalid:8000/v1",
            "default_timeout": 5,
        },
        "off": model("off", enabled=False),
    }
    async with serving(tmp_path, models) as served:
        status = (await served.client.get("/admin/status")).json()
        # What the page would offer is what the router does: the others are refused.
        refused = await served.client.post("/v1/backends/remote/load")
        assert refused.status_code == 400 and "runs elsewhere" in refused.text
        refused = await served.client.post("/v1/backends/off/restart")
        assert refused.status_code == 404, refused.text
        refused = await served.client.get("/admin/logs/remote")
        assert refused.status_code == 404, refused.text
    chat, remote, off = (_by_role(status)[role] for role in ("chat", "remote", "off"))
    assert (chat["controllable"], chat["control_note"], chat["has_log"]) == (True, None, True)
    assert (remote["controllable"], remote["has_log"]) == (False, False)
    assert remote["control_note"] == "runs elsewhere, at http://gpu-1.invalid:8000/v1"
    assert (off["controllable"], off["has_log"]) == (False, False)
    assert off["control_note"] == "disabled in the config"


def test_a_router_that_runs_no_backends_controls_none() -> None:
    report = {"model_id": "m-chat", "status": "healthy", "backend": "llamacpp"}
    assert control("chat", report, {}, runs_backends=False) == {
        "controllable": False,
        "control_note": "started and stopped elsewhere: this router (`slm-server router`) "
        "only routes",
        "has_log": False,
    }
    # A role the router runs, whatever its report says.
    assert control("chat", {"status": "error"}, {"chat": object()}, runs_backends=True) == {
        "controllable": True,
        "control_note": None,
        "has_log": True,
    }


async def test_a_failed_backend_shows_why_and_the_end_of_its_log(tmp_path: Path) -> None:
    launcher = Launcher()
    launcher.broken.add("chat")
    async with serving(tmp_path, {"chat": model("chat")}, launcher) as served:
        refused = await served.client.post("/v1/backends/chat/load")
        assert refused.status_code >= 500, refused.text
        status = (await served.client.get("/admin/status")).json()
    chat = _by_role(status)["chat"]
    assert chat["state"] == "failed"
    assert chat["last_error"]
    assert any("bad magic" in line for line in chat["log_tail"])


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    """A router with keys: alice may use m-chat only, ops is an admin."""
    keys = [
        {"name": "alice", "key_sha256": _digest(ALICE), "models": ["m-chat"]},
        {"name": "ops", "key_sha256": _digest(OPS), "admin": True},
    ]
    models = {"chat": entry("m-chat", free_port()), "other": entry("m-other", free_port())}
    app = RouterApp(make_config(models, api_keys=keys))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            yield client
    finally:
        await app.aclose()


async def test_the_status_needs_a_valid_key(keyed: httpx.AsyncClient) -> None:
    for headers in ({}, _bearer("not-a-key")):
        refused = await keyed.get("/admin/status", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_the_status_needs_an_admin_key(keyed: httpx.AsyncClient) -> None:
    # It holds every model's traffic figures (what /metrics gives admins) and log lines.
    refused = await keyed.get("/admin/status", headers=_bearer(ALICE))
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "admin_required"
    assert "'alice' is not an admin key; the dashboard needs one" in error["message"]
    ops = await keyed.get("/admin/status", headers=_bearer(OPS))
    assert ops.status_code == 200, ops.text
    assert sorted(m["model_id"] for m in ops.json()["models"]) == ["m-chat", "m-other"]
    assert ops.json()["runs_backends"] is False  # `slm-server router`: it starts no backend
    assert not any(m["controllable"] or m["has_log"] for m in ops.json()["models"])
    # What the page offers such a key instead, the playground, takes it.
    models = await keyed.get("/v1/models", headers=_bearer(ALICE))
    assert [m["id"] for m in models.json()["data"]] == ["m-chat"]


async def test_the_memory_counts_measured_and_estimated_apart() -> None:
    reports = {
        "chat": {"model_id": "m-chat", "state": "ready", "memory_mb": 1200},
        # Just started, not measured yet: held by its estimate, as the budget holds it.
        "code": {"model_id": "m-code", "state": "starting", "memory_estimate_mb": 900},
        "spare": {"model_id": "m-spare", "state": "unloaded", "memory_estimate_mb": 5000},
    }

    async def health(grant: Grant | None) -> dict[str, dict[str, Any]]:
        return reports

    dashboard = Dashboard(
        health,
        lambda: RequestTallies(["m-chat", "m-code", "m-spare"]),
        lambda: 4 * 10**9,
        runs_backends=True,
        started_at=0.0,
    )
    memory = (await dashboard.status(None))["memory"]
    assert memory == {"budget_mb": 4000, "used_mb": 1200, "estimated_mb": 900}


async def test_the_page_needs_no_key_and_allows_only_its_own_files(
    keyed: httpx.AsyncClient,
) -> None:
    for path in ("/ui", "/ui/"):
        page = await keyed.get(path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/dashboard.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    # Every module the script imports is served, as a script, without a key.
    wanted, served = ["/ui/dashboard.js"], set()
    while wanted:
        path = wanted.pop()
        script = await keyed.get(path)
        assert script.status_code == 200, path
        assert script.headers["content-type"].startswith("text/javascript")
        served.add(path)
        wanted += set(_IMPORT.findall(script.text)) - served
    assert served == {"/ui/dashboard.js", "/ui/common.js", "/ui/actions.js", "/ui/playground.js"}
    style = await keyed.get("/ui/dashboard.css")
    assert style.headers["content-type"].startswith("text/css")


async def test_the_pages_paths_take_only_get(keyed: httpx.AsyncClient) -> None:
    refused = await keyed.post("/ui", content=b"")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"
    missing = await keyed.get("/ui/nothing.js", headers=_bearer(OPS))
    assert missing.status_code == 404
    assert json.loads(missing.text)["error"]["code"] == "unknown_endpoint"


async def test_the_status_polled_every_second_stays_out_of_the_access_log(
    keyed: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    for path in ("/admin/status", "/admin/status", "/v1/models"):
        assert (await keyed.get(path, headers=_bearer(OPS))).status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(logged) == 1 and "/v1/models" in logged[0], logged
