"""The /docs page renders in a real browser (Debian's chromium) with no network but the relay."""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from relay.app import create_app
from relay.config import Settings
from relay.store.db import Database

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def relay_url(tmp_path, unused_tcp_port):
    app = create_app(Settings(), db=Database(f"sqlite+aiosqlite:///{tmp_path}/r.db"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    yield f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


async def test_docs_page_renders_every_operation_offline(relay_url):
    hosts = set()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page.on("request", lambda req: hosts.add(urlsplit(req.url).netloc))
        await page.goto(f"{relay_url}/docs")
        await page.wait_for_selector("text=Create an agent", timeout=15000)
        summaries = await page.locator(".opblock-summary-description").all_inner_texts()
        await browser.close()
    assert {"Create an agent", "Provision a number", "Rotate the webhook signing secret"} <= set(
        summaries
    )
    assert hosts == {urlsplit(relay_url).netloc}, f"the page reached out to {hosts}"
