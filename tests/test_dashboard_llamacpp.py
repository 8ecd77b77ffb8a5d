"""The dashboard's playground with a real model: the real llama-server serving the packaged
Gemma 3 270M, asked from a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser import PageErrors, chromium, require_chromium
from gemma_entry import gemma
from router_proc import RouterProcess, serving
from slm_server.backends.llamacpp import find_llama_server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RouterProcess]:
    require_chromium()
    assert find_llama_server() is not None, "llama-server missing: run scripts/sync"
    chat = gemma("gemma-chat", extra_args=["--threads", "1"])
    router = RouterProcess({"models": {"chat": chat}}, tmp_path, command="serve")
    with serving(router, 120):
        yield router


def test_the_playground_streams_a_real_models_answer(served: RouterProcess) -> None:
    with chromium() as browser:
        page = browser.new_page()
        errors = PageErrors(page)
        page.goto(f"{served.url}/ui")
        expect(page.locator('#models tr[data-role="chat"] .state')).to_have_text("ready")
        expect(page.locator("#play-model")).to_have_value("gemma-chat")
        page.fill("#play-message", "Name three colours.")
        page.fill("#play-max-tokens", "12")
        page.click("#play-send")
        expect(page.locator("#play-send")).to_be_disabled()
        expect(page.locator("#play-send")).to_be_enabled(timeout=60_000)
        answer = page.locator("#play-answer").text_content() or ""
        assert answer.strip(), "no answer shown"
        expect(page.locator("#play-error")).to_have_text("")
        # The page's next polls count the answer in the model's figures.
        expect(page.locator('#models tr[data-role="chat"] td').nth(5)).not_to_have_text("0.0")
        assert errors.errors == []
