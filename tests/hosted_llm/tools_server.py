"""The developer's tool endpoint for tests: verifies each signed ``tool.call``, answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.engine.harness import SECRET


class ToolServer:
    def __init__(self, reply: Any = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.verified: list[bool] = []
        self.reply = reply or (lambda body: web.json_response({"result": {"status": "shipped"}}))
        self.url = ""
        self.request: web.Request | None = None  # the one being answered (for a streamed reply)

    async def start(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_post("/tool", self.handle)
        running = await aiohttp_server(app)
        self.url = str(running.make_url("/tool"))
        return self.url

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            Webhook(SECRET).verify(raw, dict(request.headers))
            self.verified.append(True)
        except Exception:
            self.verified.append(False)
        body = json.loads(raw)
        self.requests.append(body)
        self.request = request
        result = self.reply(body)
        response: web.StreamResponse = await result if asyncio.iscoroutine(result) else result
        return response
