"""A real headless Chromium for the dashboard's tests, driven by Playwright.

Chromium comes from the system's packages (Debian's ``chromium``), never from
Playwright's own download. Without one the browser tests skip, saying why, unless
``SLM_REQUIRE_BROWSER=1`` (CI) makes them fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from config_builder import entry
from net import free_port

REQUIRE_ENV = "SLM_REQUIRE_BROWSER"
CHROMIUM_ENV = "SLM_CHROMIUM"  # a Chromium binary to use instead of the one on PATH


def chromium_path() -> str | None:
    """The Chromium to drive: $SLM_CHROMIUM, else the first found on PATH."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium path; skips the test without one (fails under SLM_REQUIRE_BROWSER=1)."""
    path = chromium_path()
    if path is not None:
        return path
    reason = (
        "no Chromium found (install Debian's `chromium` package, or set SLM_CHROMIUM "
        "to a Chromium binary)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 needs the browser tests to run")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed on the way out."""
    path = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def placeholder_model(directory: Path, role: str, **fields: Any) -> dict[str, Any]:
    """An entry ``m-<role>`` on a free port whose GGUF is a placeholder: ``memory_gb``
    replaces the estimate, and the fake llama-server never reads the file."""
    gguf = directory / f"{role}.gguf"
    gguf.write_bytes(b"GGUF")
    fields = {"memory_gb": 1, "default_timeout": 30, **fields}
    return entry(f"m-{role}", free_port(), model_path=str(gguf), **fields)


@contextmanager
def new_page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own (its own session storage), closed afterwards."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


class PageErrors:
    """The page's uncaught errors and the messages it logged as errors, to assert none."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A failed fetch is logged too; the tests that expect one (a 401) say so.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)
