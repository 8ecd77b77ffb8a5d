"""The dashboard in a real headless Chromium, against a real ``slm-server serve``.

The backends are the fake llama-server (tests/fake_llama_server.py): real processes that
stream a known answer, slowly enough for the page to show it arriving piece by piece.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

import fake_llama_server
from browser import PageErrors, chromium, new_page, placeholder_model, require_chromium
from net import wait_until
from router_proc import RouterProcess

ALICE = "alice-key-0123456789"
OPS = "ops-key-0123456789"
CHUNKS = 6
# Every piece of a stream a little apart: the page must show them as they come.
BACKEND_ARGS = f"--chunks {CHUNKS} --chunk-delay 0.15"
ANSWER = "".join(f"tok{i} " for i in range(CHUNKS))
WAIT_MS = 20_000


def _serve(directory: Path, router: dict[str, Any]) -> RouterProcess:
    bin_dir = fake_llama_server.install(directory / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(directory / "cache"),
        fake_llama_server.ARGS_ENV: BACKEND_ARGS,
    }
    models = {
        "chat": placeholder_model(directory, "chat"),
        "spare": placeholder_model(directory, "spare", on_demand=True),
        # More than any budget below: its load is refused, whatever else runs.
        "huge": placeholder_model(directory, "huge", on_demand=True, memory_gb=64),
    }
    config = {"models": models, "router": router}
    return RouterProcess(config, directory, command="serve", env=env, api_key=OPS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    require_chromium()  # before starting anything the tests would not use
    router = _serve(tmp_path_factory.mktemp("dashboard"), {"memory_budget_gb": 4})
    router.start()
    try:
        _wait_chat_ready(router)
        yield router
    finally:
        router.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as opened:
        yield opened


def _state(page: Page, role: str) -> Any:
    return page.locator(f'#models tr[data-role="{role}"] .state')


def test_the_page_lists_every_model_with_its_state(served: RouterProcess, page: Page) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    expect(_state(page, "chat")).to_have_text("ready", timeout=WAIT_MS)
    expect(_state(page, "spare")).to_have_text("unloaded")
    expect(_state(page, "chat")).to_have_class("state state-ready")
    expect(page.locator('#models tr[data-role="chat"] td').first).to_contain_text("m-chat")
    expect(page.locator("#memory-legend")).to_contain_text("4.0 GB budget")
    expect(page.locator("#router-info")).to_contain_text("version")
    # No key is set: every action is there.
    expect(page.locator('tr[data-role="spare"] .action-load')).to_be_enabled()
    expect(page.locator("#reload-config")).to_be_visible()
    assert errors.errors == []


def test_a_load_click_starts_an_on_demand_model_and_its_state_turns_ready(
    served: RouterProcess, page: Page
) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    expect(_state(page, "spare")).to_have_text("unloaded", timeout=WAIT_MS)
    try:
        page.locator('tr[data-role="spare"] .action-load').click()
        expect(_state(page, "spare")).to_have_text("ready", timeout=WAIT_MS)
        assert served.backends()["spare"]["state"] == "ready"
        expect(page.locator("#notice")).to_have_text("spare: loaded")
        expect(page.locator('tr[data-role="spare"] .action-unload')).to_be_enabled()
        # A change made elsewhere shows within a poll or two (the page asks every second).
        unloaded = httpx.post(f"{served.url}/v1/backends/spare/unload", timeout=30)
        assert unloaded.status_code == 200, unloaded.text
        expect(_state(page, "spare")).to_have_text("unloaded", timeout=3000)
    finally:
        httpx.post(f"{served.url}/v1/backends/spare/unload", timeout=30)
    assert errors.errors == []


def test_a_refused_action_shows_the_routers_message(served: RouterProcess, page: Page) -> None:
    page.goto(f"{served.url}/ui")
    expect(_state(page, "huge")).to_have_text("unloaded", timeout=WAIT_MS)
    page.locator('tr[data-role="huge"] .action-load').click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("huge: load failed:", timeout=WAIT_MS)
    expect(notice).to_contain_text("memory budget")  # the 503 envelope's own message
    expect(notice).to_have_class("error")
    expect(_state(page, "huge")).to_have_text("unloaded")


def test_the_playground_shows_the_answer_as_it_streams(served: RouterProcess, page: Page) -> None:
    errors = PageErrors(page)
    page.goto(f"{served.url}/ui")
    expect(page.locator("#play-model option")).to_have_count(3, timeout=WAIT_MS)
    page.select_option("#play-model", "m-chat")
    # Every text the answer shows on its way, as the page changes it.
    page.evaluate(
        """() => {
            window.seen = [];
            const answer = document.getElementById("play-answer");
            new MutationObserver(() => window.seen.push(answer.textContent))
                .observe(answer, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.fill("#play-message", "hello")
    page.click("#play-send")
    expect(page.locator("#play-answer")).to_have_text(ANSWER, timeout=WAIT_MS)
    expect(page.locator("#play-send")).to_be_enabled()
    seen: list[str] = page.evaluate("() => window.seen")
    pieces = [text for text in dict.fromkeys(seen) if text.startswith("tok")]
    assert len(pieces) >= 3, seen  # it grew piece by piece, not all at once at the end
    assert all(ANSWER.startswith(text) for text in pieces), seen
    expect(page.locator("#play-error")).to_have_text("")
    assert errors.errors == []


def test_the_playground_shows_the_routers_error_message(served: RouterProcess, page: Page) -> None:
    page.goto(f"{served.url}/ui")
    expect(page.locator("#play-model option")).to_have_count(3, timeout=WAIT_MS)
    # A model that went away since the list was read: the router's 404 message is shown.
    page.evaluate(
        """() => {
            const option = document.createElement("option");
            option.value = option.textContent = "no-such-model";
            document.getElementById("play-model").append(option);
        }"""
    )
    page.select_option("#play-model", "no-such-model")
    page.fill("#play-message", "hello")
    page.click("#play-send")
    expect(page.locator("#play-error")).to_contain_text("no-such-model", timeout=WAIT_MS)
    expect(page.locator("#play-answer")).to_have_text("")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    require_chromium()
    keys = [
        {"name": "alice", "key_sha256": _digest(ALICE), "models": ["m-chat"]},
        {"name": "ops", "key_sha256": _digest(OPS), "admin": True},
    ]
    router = _serve(tmp_path_factory.mktemp("dashboard-keys"), {"api_keys": keys})
    router.start()
    try:
        _wait_chat_ready(router)
        yield router
    finally:
        router.stop()


def _wait_chat_ready(router: RouterProcess) -> None:
    wait_until(lambda: router.backends()["chat"].get("state") == "ready", 30, "chat ready")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _enter_key(page: Page, key: str) -> None:
    expect(page.locator("#key-form")).to_be_visible(timeout=WAIT_MS)
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def test_with_keys_the_page_asks_for_one_then_shows_the_models(
    keyed: RouterProcess, page: Page
) -> None:
    page.goto(f"{keyed.url}/ui")
    expect(page.locator("#dashboard")).to_be_hidden()
    _enter_key(page, "not-the-key")
    expect(page.locator("#key-error")).to_contain_text("not valid", timeout=WAIT_MS)
    _enter_key(page, OPS)
    expect(_state(page, "chat")).to_have_text("ready", timeout=WAIT_MS)
    expect(_state(page, "spare")).to_have_text("unloaded")
    expect(page.locator('tr[data-role="spare"] .action-load')).to_be_visible()
    # Kept for this tab only, and never in the address.
    assert page.evaluate("() => sessionStorage.getItem('slm-server-api-key')") == OPS
    assert page.evaluate("() => localStorage.length") == 0
    assert OPS not in page.url


def test_a_key_that_is_not_an_admins_is_told_so_and_gets_the_playground(
    keyed: RouterProcess, page: Page
) -> None:
    errors = PageErrors(page)
    page.goto(f"{keyed.url}/ui")
    _enter_key(page, ALICE)
    expect(page.locator("#admin-needed")).to_contain_text("not an admin key", timeout=WAIT_MS)
    expect(page.locator("#dashboard")).to_be_hidden()
    expect(page.locator("#models tbody tr")).to_have_count(0)  # no figures, no logs
    expect(page.locator("#reload-config")).to_be_hidden()
    # The playground lists the models the key may use, and answers.
    expect(page.locator("#play-model option")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#play-model option")).to_have_text("m-chat")
    page.fill("#play-message", "hello")
    page.click("#play-send")
    expect(page.locator("#play-answer")).to_have_text(ANSWER, timeout=WAIT_MS)
    # Another key may be given: an admin's shows the dashboard.
    page.click("#forget-key")
    _enter_key(page, OPS)
    expect(_state(page, "spare")).to_have_text("unloaded", timeout=WAIT_MS)
    expect(page.locator("#admin-needed")).to_be_hidden()
    expect(page.locator("#play-model option")).to_have_count(3)
    assert errors.errors == []
