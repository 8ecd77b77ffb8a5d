"""The dashboard's admin parts in a real headless Chromium, against a real ``slm-server
serve`` and the endpoints they call: a backend's log panel, Restart, and which models get
buttons at all. The reload button is in test_dashboard_reload_browser.py.

The backends are the fake llama-server (tests/fake_llama_server.py), run with
``--log-requests``: each request it gets is a line of its log, and ``POST /_fake/say``
writes any line there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

import fake_llama_server
from browser import PageErrors, chromium, new_page, placeholder_model, require_chromium
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess

WAIT_MS = 20_000
# A line a backend writes is on the page this soon (the dashboard's promise: under 2 s
# behind), on a busy machine too: the log goes pipe -> router -> open fetch, no polling.
LOG_LINE_MS = 2_000
NOTHING = "\N{EN DASH}"  # what the page shows for a figure that does not apply


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """``chat`` started at once; ``remote``, a model on a server elsewhere (chat's own
    server, as another machine's would be); ``off``, disabled."""
    require_chromium()  # before starting anything the tests would not use
    directory = tmp_path_factory.mktemp("dashboard-live")
    bin_dir = fake_llama_server.install(directory / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(directory / "cache"),
        fake_llama_server.ARGS_ENV: "--log-requests",
    }
    chat = placeholder_model(directory, "chat")
    remote = {
        "id": "m-remote",
        "backend": "openai",
        "base_url": f"http://127.0.0.1:{chat['port']}/v1",
        "default_timeout": 30,
    }
    models = {
        "chat": chat,
        "remote": remote,
        "off": placeholder_model(directory, "off", enabled=False),
    }
    router = RouterProcess({"models": models}, directory, command="serve", env=env)
    router.start()
    try:
        wait_until(lambda: router.backends()["chat"].get("state") == "ready", 30, "chat ready")
        yield router
    finally:
        router.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as opened:
        yield opened


def _row(page: Page, role: str) -> Any:
    return page.locator(f'#models tr[data-role="{role}"]:not(.problem)')


def _backend_port(router: RouterProcess, role: str) -> int:
    port: int = router.backends()[role]["port"]
    return port


def test_the_log_panel_shows_a_backends_log_and_each_new_line_as_it_is_written(
    served: RouterProcess, page: Page
) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    expect(_row(page, "chat").locator(".state")).to_have_text("ready", timeout=WAIT_MS)
    # A line written before the panel opens comes with the log's last lines.
    before = f"written before the panel opened {uuid.uuid4().hex}"
    port = _backend_port(served, "chat")
    said = httpx.post(f"http://127.0.0.1:{port}/_fake/say", json={"lines": [before]}, timeout=10)
    assert said.status_code == 200, said.text
    _row(page, "chat").locator(".action-logs").click()
    panel = page.locator('.log-panel[data-role="chat"]')
    expect(panel.locator(".log-head")).to_contain_text("following", timeout=WAIT_MS)
    log = panel.locator("pre")
    expect(log).to_contain_text(before, timeout=WAIT_MS)
    expect(_row(page, "chat").locator(".action-logs")).to_have_text("Hide logs")
    # A line the backend writes now: its answer comes once the line is written.
    after = f"written while the panel follows {uuid.uuid4().hex}"
    said = httpx.post(f"http://127.0.0.1:{port}/_fake/say", json={"lines": [after]}, timeout=10)
    assert said.status_code == 200, said.text
    expect(log).to_contain_text(after, timeout=LOG_LINE_MS)
    # A request through the router is a line of the backend's log too (--log-requests).
    reply = served.openai().chat.completions.create(
        model="m-chat", messages=[{"role": "user", "content": "hi"}], timeout=30
    )
    assert reply.choices[0].message.content
    expect(log).to_contain_text("POST /v1/chat/completions", timeout=LOG_LINE_MS)
    # Closing the panel ends the stream.
    panel.locator("button").click()
    expect(page.locator(".log-panel")).to_have_count(0)
    expect(_row(page, "chat").locator(".action-logs")).to_have_text("Logs")
    assert errors.errors == []


def test_restart_gives_the_model_a_new_process_shown_on_the_page(
    served: RouterProcess, page: Page
) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    row = _row(page, "chat")
    expect(row.locator(".state")).to_have_text("ready", timeout=WAIT_MS)
    old_pid = served.backends()["chat"]["pid"]
    expect(row.locator(".pid")).to_have_text(f"pid {old_pid}")
    row.locator(".action-restart").click()
    expect(page.locator("#notice")).to_have_text("chat: restarted", timeout=WAIT_MS)
    report = served.backends()["chat"]
    assert report["state"] == "ready" and report["pid"] != old_pid, report
    expect(row.locator(".pid")).to_have_text(f"pid {report['pid']}", timeout=WAIT_MS)
    expect(row.locator(".state")).to_have_text("ready")
    expect(row.locator(".action-restart")).to_be_enabled()
    # The new process answers.
    reply = served.openai().chat.completions.create(
        model="m-chat", messages=[{"role": "user", "content": "hi"}], timeout=30
    )
    assert reply.choices[0].message.content
    assert errors.errors == []


def test_only_a_model_this_router_runs_gets_load_unload_restart_and_logs(
    served: RouterProcess, page: Page
) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    chat, remote, off = _row(page, "chat"), _row(page, "remote"), _row(page, "off")
    expect(chat.locator(".state")).to_have_text("ready", timeout=WAIT_MS)
    for action in ("load", "unload", "restart", "logs"):
        expect(chat.locator(f".action-{action}")).to_be_visible()
        # The router would refuse these (400: runs elsewhere; 404: disabled): not offered.
        expect(remote.locator(f".action-{action}")).to_be_hidden()
        expect(off.locator(f".action-{action}")).to_be_hidden()
    expect(remote.locator(".control-note")).to_have_text(
        f"runs elsewhere, at http://127.0.0.1:{_backend_port(served, 'chat')}/v1"
    )
    expect(off.locator(".control-note")).to_have_text("disabled in the config")
    expect(chat.locator(".control-note")).to_have_text("")
    # When it starts is the router's to say only of a model it starts.
    expect(chat.locator('td[data-cell="mode"]')).to_have_text("at start")
    expect(remote.locator('td[data-cell="mode"]')).to_have_text(NOTHING)
    expect(off.locator('td[data-cell="mode"]')).to_have_text(NOTHING)
    assert errors.errors == []


def test_a_router_that_runs_no_backends_offers_no_buttons_for_them(
    browser: Browser, tmp_path: Path
) -> None:
    # `slm-server router`: the backends run elsewhere, on ports given in the file.
    models = {"chat": entry("m-chat", free_port()), "code": entry("m-code", free_port())}
    router = RouterProcess({"models": models}, tmp_path, command="router")
    router.start()
    page = browser.new_page()
    try:
        errors = PageErrors(page)
        page.goto(f"{router.url}/ui")
        for role in ("chat", "code"):
            row = _row(page, role)
            expect(row.locator(".control-note")).to_contain_text(
                "this router (`slm-server router`) only routes", timeout=WAIT_MS
            )
            for action in ("load", "unload", "restart", "logs"):
                expect(row.locator(f".action-{action}")).to_be_hidden()
        expect(page.locator("#reload-config")).to_be_visible()  # a reload applies to it too
        assert errors.errors == []
    finally:
        page.close()
        router.stop()
