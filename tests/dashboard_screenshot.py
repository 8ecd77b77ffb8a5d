"""Takes the README's screenshot of the dashboard: ``scripts/screenshot-dashboard [PNG]``.

Serves a demo config of real models (the packaged Gemma 3 270M, under three roles, one
started at once and two on demand, within a 2 GB budget), sends a few requests, loads one
model from the page, asks the playground something, and photographs the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from browser import chromium
from gemma_entry import gemma
from net import wait_until
from router_proc import RouterProcess

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PNG = REPO / "docs" / "images" / "dashboard.png"
WAIT_MS = 120_000


def demo_config() -> dict[str, Any]:
    threads = ["--threads", "1"]
    return {
        "router": {"memory_budget_gb": 2},
        "models": {
            "chat": gemma("gemma-chat", extra_args=threads),
            "writer": gemma("gemma-writer", on_demand=True, idle_ttl_s=600, extra_args=threads),
            "notes": gemma("gemma-notes", on_demand=True, extra_args=threads),
        },
    }


def warm_up(router: RouterProcess) -> None:
    """A few answers, so the figures over the last minutes have something to show."""
    client = router.openai()
    for question in ("What is the sea?", "Name a colour.", "Count to five.", "Say hello."):
        stream = client.chat.completions.create(
            model="gemma-chat",
            messages=[{"role": "user", "content": question}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass


def screenshot(router: RouterProcess, png: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{router.url}/ui")
        row = page.locator('#models tr[data-role="writer"]')
        expect(row.locator(".state")).to_have_text("unloaded", timeout=WAIT_MS)
        row.locator(".action-load").click()
        expect(row.locator(".state")).to_have_text("ready", timeout=WAIT_MS)
        page.select_option("#play-model", "gemma-chat")
        page.fill("#play-message", "Write one sentence about the sea.")
        page.fill("#play-max-tokens", "40")
        page.click("#play-send")
        expect(page.locator("#play-send")).to_be_disabled()
        expect(page.locator("#play-send")).to_be_enabled(timeout=WAIT_MS)
        logs = httpx.get(f"{router.url}/admin/logs/chat?tail=5", timeout=5)
        if logs.status_code == 200:  # a router with log streaming
            page.locator('#models tr[data-role="chat"] .action-logs').click()
            expect(page.locator(".log-panel pre")).not_to_be_empty(timeout=WAIT_MS)
        page.wait_for_timeout(1500)  # one more poll: the figures include the last answer
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", type=Path, default=DEFAULT_PNG)
    png: Path = parser.parse_args().png.resolve()
    with tempfile.TemporaryDirectory() as directory:
        router = RouterProcess(demo_config(), Path(directory), command="serve")
        try:
            router.start()
            wait_until(lambda: router.backends()["chat"].get("state") == "ready", 120, "chat ready")
            warm_up(router)
            screenshot(router, png)
        except BaseException:
            print(router.log()[-4000:], file=sys.stderr)
            raise
        finally:
            router.stop()
    print(f"{png}: {png.stat().st_size // 1024} KB", file=sys.stderr)


if __name__ == "__main__":
    main()
