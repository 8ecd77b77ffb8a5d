"""The dashboard's log panel in a real headless Chromium, reading a log stream as
``GET /admin/logs/{role}?tail=N&follow=1`` sends it: chunked text, one line per newline.

The stream comes from a scripted stand-in in front of the router (this file tests the
page's side of that contract), so the test controls where the chunks split the lines.
A real backend's log in the panel: test_dashboard_live_browser.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from browser import require_chromium
from config_builder import entry, make_config
from net import free_port
from router_served import served
from slm_server.router.app import RouterApp
from slm_server.router.asgi import Message, Receive, Scope, Send

OPS = "ops-key-0123456789"
LINES = 600  # more than the panel keeps (500)


class LogStream:
    """The router, with ``/admin/logs/ROLE`` answered from a script: the lines
    ``ROLE line 0`` to ``ROLE line 599``, cut mid-line into chunks, then held open."""

    def __init__(self, app: RouterApp) -> None:
        self.app = app
        self.asked: list[tuple[str, bytes, bytes | None]] = []  # path, query, authorization

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/admin/status":
            await self.app(scope, receive, _with_logs(send))
            return
        if scope["type"] != "http" or not scope["path"].startswith("/admin/logs/"):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization")
        self.asked.append((scope["path"], scope["query_string"], authorization))
        if authorization != f"Bearer {OPS}".encode():
            body = b'{"error": {"message": "key wanted", "type": "authentication_error"}}'
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        role = scope["path"].rsplit("/", 1)[1]
        text = "".join(f"{role} line {i}\n" for i in range(LINES)).encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for at in range(0, len(text), 1000):  # 1000 bytes: lines split across chunks
            piece = text[at : at + 1000]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        # Held open, as a follower's stream is, until the page leaves.
        while (await receive())["type"] != "http.disconnect":
            pass


def _with_logs(send: Send) -> Send:
    """``send`` for the router's status, each model said to have a log (the router here
    runs no backend, so it has none: the stand-in serves them)."""

    async def rewritten(message: Message) -> None:
        if message["type"] == "http.response.start":
            # The body's length changes: sent without it (chunked).
            headers = [(k, v) for k, v in message["headers"] if k != b"content-length"]
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and message.get("body"):
            status = json.loads(message["body"])
            for model in status.get("models", []):
                model["has_log"] = True
            message = {**message, "body": json.dumps(status).encode()}
        await send(message)

    return rewritten


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_log_panel_follows_a_stream_with_the_key_and_keeps_its_last_lines(
    browser: Browser,
) -> None:
    ops = {"name": "ops", "key_sha256": hashlib.sha256(OPS.encode()).hexdigest(), "admin": True}
    config = make_config({"chat": entry("m-chat", free_port())}, api_keys=[ops])
    stand_in = LogStream(RouterApp(config))
    async with served(stand_in) as url:
        page = await browser.new_page()
        await page.goto(f"{url}/ui")
        await page.fill("#key-input", OPS)
        await page.click("#key-form button[type=submit]")
        await page.click('#models tr[data-role="chat"] .action-logs')
        log = page.locator('.log-panel[data-role="chat"] pre')
        await expect(log).to_contain_text(f"chat line {LINES - 1}")
        text = await log.text_content() or ""
        kept = text.split("\n")
        assert len(kept) == 500
        assert kept[0] == f"chat line {LINES - 500}" and kept[-1] == f"chat line {LINES - 1}"
        await expect(page.locator('.log-panel[data-role="chat"] .log-head')).to_contain_text(
            "following"
        )
        # Closing the panel ends the stream; the key went in a header, never in the URL.
        await page.click('.log-panel[data-role="chat"] button')
        await expect(page.locator(".log-panel")).to_have_count(0)
        await page.close()
    assert stand_in.asked == [("/admin/logs/chat", b"tail=200&follow=1", f"Bearer {OPS}".encode())]


async def test_at_most_three_logs_are_followed_and_the_status_keeps_coming(
    browser: Browser,
) -> None:
    # Each followed log holds one of the browser's 6 connections to the router: with
    # 6 open, the status poll and every button would wait behind them for good.
    ops = {"name": "ops", "key_sha256": hashlib.sha256(OPS.encode()).hexdigest(), "admin": True}
    roles = ["a", "b", "c", "d", "e", "f"]
    models = {role: entry(f"m-{role}", free_port()) for role in roles}
    stand_in = LogStream(RouterApp(make_config(models, api_keys=[ops])))
    async with served(stand_in) as url:
        page = await browser.new_page()
        try:
            await page.goto(f"{url}/ui")
            await page.fill("#key-input", OPS)
            await page.click("#key-form button[type=submit]")
            for role in roles:
                await page.click(f'#models tr[data-role="{role}"] .action-logs')
            panels = page.locator(".log-panel")
            await expect(panels).to_have_count(3)
            for role in ("a", "b", "c"):
                await expect(page.locator(f'.log-panel[data-role="{role}"] pre')).to_contain_text(
                    f"{role} line {LINES - 1}"
                )
            await expect(page.locator("#notice")).to_contain_text("at most 3 logs")
            # The status still comes every second beside the three streams.
            connection = page.locator("#connection")
            seen = await connection.text_content()
            await expect(connection).not_to_have_text(seen or "", timeout=5000)
            await expect(connection).to_contain_text("live")
            # Closing one makes room for another.
            await page.click('#models tr[data-role="a"] .action-logs')
            await page.click('#models tr[data-role="d"] .action-logs')
            await expect(page.locator('.log-panel[data-role="d"] pre')).to_contain_text(
                f"d line {LINES - 1}"
            )
            await expect(panels).to_have_count(3)
        finally:
            await page.close()
    assert [path for path, _, _ in stand_in.asked] == [f"/admin/logs/{r}" for r in "abcd"]
