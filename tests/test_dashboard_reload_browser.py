"""The dashboard's Reload config button in a real headless Chromium, against a real
``slm-server serve`` whose config file the test rewrites: the page shows the models of the
new file, and what the reload answered (per role, the router's settings, the warnings),
or the errors of a file that was refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

import fake_llama_server
from browser import PageErrors, chromium, new_page, placeholder_model, require_chromium
from net import free_port
from router_proc import RouterProcess

WAIT_MS = 20_000
Serve = Callable[[dict[str, Any]], RouterProcess]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as opened:
        yield opened


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    require_chromium()  # before starting anything the tests would not use
    bin_dir = fake_llama_server.install(tmp_path / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(tmp_path / "cache"),
    }
    routers: list[RouterProcess] = []

    def start(config: dict[str, Any]) -> RouterProcess:
        router = RouterProcess(config, tmp_path, command="serve", env=env)
        routers.append(router)
        return router.start()

    yield start
    for router in routers:
        router.stop()


def _rewrite(router: RouterProcess, config: dict[str, Any]) -> None:
    (router.tmp_dir / "models.yaml").write_text(yaml.safe_dump(config))


def _row(page: Page, role: str) -> Any:
    return page.locator(f'#models tr[data-role="{role}"]:not(.problem)')


def _open(page: Page, router: RouterProcess, roles: list[str]) -> None:
    page.goto(f"{router.url}/ui")
    rows = page.locator("#models tbody tr:not(.problem)")
    expect(rows).to_have_count(len(roles), timeout=WAIT_MS)
    for role in roles:
        expect(_row(page, role)).to_have_count(1)


def test_a_reload_shows_the_new_models_and_what_it_did_to_each_role(
    tmp_path: Path, serve: Serve, page: Page
) -> None:
    a, b = placeholder_model(tmp_path, "a"), placeholder_model(tmp_path, "b")
    router = serve({"models": {"a": a, "b": b}})
    pid_a = router.wait_backends_ready(30)["a"]["pid"]
    errors = PageErrors(page)
    _open(page, router, ["a", "b"])
    expect(_row(page, "b").locator(".state")).to_have_text("ready", timeout=WAIT_MS)
    _rewrite(router, {"models": {"a": a, "c": placeholder_model(tmp_path, "c", on_demand=True)}})
    page.click("#reload-config")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("config reloaded", timeout=WAIT_MS)
    expect(notice).not_to_have_class("error")
    lines = (notice.text_content() or "").split("\n")
    assert lines == [
        "config reloaded",
        "added: c",
        "removed (stopped once its requests are done): b",
        "unchanged: a",
    ], lines
    # The table follows the new file: c is there (on demand, not started), b is gone.
    expect(_row(page, "c").locator(".state")).to_have_text("unloaded", timeout=WAIT_MS)
    expect(_row(page, "b")).to_have_count(0)
    expect(_row(page, "a").locator(".pid")).to_have_text(f"pid {pid_a}")  # left running
    expect(page.locator("#reload-config")).to_be_enabled()
    assert set(router.backends()) == {"a", "c"}
    assert errors.errors == []


def test_a_config_with_errors_is_refused_and_the_page_lists_them(
    tmp_path: Path, serve: Serve, page: Page
) -> None:
    config = {"models": {"a": placeholder_model(tmp_path, "a", on_demand=True)}}
    router = serve(config)
    _open(page, router, ["a"])
    # Two errors: a model file that is not there, and a port out of range.
    broken = placeholder_model(tmp_path, "broken", on_demand=True)
    broken.update(model_path=str(tmp_path / "missing.gguf"), port=70000)
    _rewrite(router, {"models": {**config["models"], "broken": broken}})
    page.click("#reload-config")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("reload failed:", timeout=WAIT_MS)
    expect(notice).to_have_class("error")
    # What the router answers for this file (it changes nothing: it can be asked again).
    refused = httpx.post(f"{router.url}/admin/reload", timeout=30)
    assert refused.status_code == 400, refused.text
    problems = refused.json()["error"]["problems"]
    assert len(problems) == 2, problems
    lines = (notice.text_content() or "").split("\n")
    assert lines[0].startswith("reload failed: ") and lines[0].endswith(
        "2 error(s), the running config stays"
    ), lines
    assert lines[1:] == [f"- {problem}" for problem in problems]  # each once, one a line
    assert any("missing.gguf" in line for line in lines) and any("70000" in line for line in lines)
    # Nothing changed.
    expect(_row(page, "broken")).to_have_count(0)
    expect(_row(page, "a")).to_have_count(1)
    expect(page.locator("#reload-config")).to_be_enabled()
    assert set(router.backends()) == {"a"}


def test_the_reload_notice_says_which_router_settings_changed_or_wait_and_the_warnings(
    tmp_path: Path, serve: Serve, page: Page
) -> None:
    models = {"a": placeholder_model(tmp_path, "a", on_demand=True)}
    router = serve({"models": models})
    _open(page, router, ["a"])
    # A disabled model whose file is missing: a warning, not an error (it is not started).
    off = placeholder_model(tmp_path, "off", enabled=False)
    off["model_path"] = str(tmp_path / "not-there.gguf")
    # max_queue applies at once; another port needs the server restarted.
    new_router = {"max_queue": 7, "port": free_port()}
    _rewrite(router, {"models": {**models, "off": off}, "router": new_router})
    page.click("#reload-config")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("config reloaded", timeout=WAIT_MS)
    lines = (notice.text_content() or "").split("\n")
    assert lines[:4] == [
        "config reloaded",
        "unchanged: a, off",
        "router settings changed now: max_queue",
        "changed in the file, but only a restart of the server applies them "
        "(the old values stay until then): port",
    ], lines
    assert lines[4] == "warnings:", lines
    warnings = lines[5:]
    assert len(warnings) == 1 and warnings[0].startswith("- warning: "), lines
    assert "not-there.gguf" in warnings[0]
    expect(notice).not_to_have_class("error")
    expect(_row(page, "off").locator(".state")).to_have_text("disabled", timeout=WAIT_MS)
