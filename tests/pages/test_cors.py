"""A page on another origin, in a real browser (Debian's chromium), uses a publishable key:
the browser's own CORS rules let it create a call only from a page the key lists, and never
let it use a secret key."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from relay.app import create_app
from relay.auth import create_key
from relay.config import Settings
from relay.store.db import Database
from tests.pages.test_docs import CHROMIUM, CHROMIUM_ARGS

PAGE = "<!doctype html><title>shop</title><p>shop</p>"
# Runs in the page: the answer's status and error code, or what fetch threw.
FETCH = """async ([url, method, key, body]) => {
  try {
    const resp = await fetch(url, {
      method,
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
      body: body === null ? undefined : JSON.stringify(body),
    });
    const answer = await resp.json();
    return {status: resp.status, code: answer.error ? answer.error.code : null};
  } catch (e) {
    return {thrown: e.name};
  }
}"""


async def page_handler(_request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def origins(tmp_path, unused_tcp_port_factory):
    """The relay's origin and a shop page's, on two ports of 127.0.0.1 (two origins)."""
    relay_port, page_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/r.db")
    relay = await serve(create_app(Settings(allow_private_webhooks=True), db=db), relay_port)
    shop = web.Application()
    shop.router.add_get("/", page_handler)
    page = await serve(shop, page_port)
    async with db.session() as session:  # the first key: what `relay keys create` does
        secret, _ = await create_key(session, "shop")
    yield f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{page_port}", secret
    await page.cleanup()
    await relay.cleanup()


async def api(session, relay, method, path, key, body=None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.request(method, relay + path, json=body, headers=headers) as resp:
        assert resp.status < 300, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_page_creates_a_call_only_with_a_publishable_key_that_lists_it(origins):
    relay, shop, secret = origins
    async with aiohttp.ClientSession() as session:
        agent = await api(
            session, relay, "POST", "/v1/agents", secret,
            {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"},
        )  # fmt: skip
        keys = {}
        for name, allowed in (("listed", [shop]), ("other", ["https://elsewhere.test"])):
            made = await api(
                session, relay, "POST", "/v1/keys", secret,
                {"kind": "publishable", "channels": ["websocket"], "allowedOrigins": allowed},
            )  # fmt: skip
            keys[name] = made["key"]
    call = {"agentId": agent["id"], "connectionType": "websocket"}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.goto(shop + "/")

        async def fetch(method, path, key, body=None):
            return await page.evaluate(FETCH, [relay + path, method, key, body])

        made = await fetch("POST", "/v1/calls", keys["listed"], call)
        refused = await fetch("POST", "/v1/calls", keys["other"], call)
        with_secret = await fetch("POST", "/v1/calls", secret, call)
        read_with_secret = await fetch("GET", "/v1/agents", secret)
        read_with_publishable = await fetch("GET", "/v1/calls", keys["listed"])
        await browser.close()

    assert made == {"status": 201, "code": None}
    # Refused by the relay, and the page may read why.
    assert refused == {"status": 403, "code": "origin_not_allowed"}
    assert with_secret == {"status": 403, "code": "secret_key_in_browser"}
    # Routes without CORS: the browser does not even send the request.
    assert read_with_secret == {"thrown": "TypeError"}
    assert read_with_publishable == {"thrown": "TypeError"}
    async with aiohttp.ClientSession() as session:
        listed = await api(session, relay, "GET", "/v1/calls", secret)
    assert len(listed["data"]) == 1
