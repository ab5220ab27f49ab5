"""A local webhook receiver for tests and benchmarks: records every request, answers as told."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    at: float = field(default_factory=time.time)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def type(self) -> str:
        return str(self.json["type"])

    @property
    def call_id(self) -> str | None:
        return self.json["data"].get("callId")

    def verify(self, secret: str) -> Any:
        """The payload, if the Standard Webhooks signature verifies (raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


Answer = Callable[[Received, int], Awaitable[web.StreamResponse]]


async def ok(_got: Received, _n: int) -> web.StreamResponse:
    return web.Response(status=204)


class Receiver:
    """``answer(received, n)`` decides the response; ``n`` counts this webhook-id's arrivals
    (1 for the first)."""

    def __init__(self, answer: Answer = ok) -> None:
        self.answer = answer
        self.requests: list[Received] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(dict(request.headers), await request.text())
        self.requests.append(got)
        self._changed.set()
        n = sum(1 for r in self.requests if r.webhook_id == got.webhook_id)
        return await self.answer(got, n)

    async def wait_for(
        self, done: Callable[[list[Received]], bool], within: float = 10.0
    ) -> list[Received]:
        deadline = time.monotonic() + within
        while not done(self.requests):
            left = deadline - time.monotonic()
            if left <= 0:
                summary = [(r.type, r.call_id, r.webhook_id) for r in self.requests]
                raise AssertionError(f"receiver timed out; got {summary}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return self.requests

    async def wait_count(self, count: int, within: float = 10.0) -> list[Received]:
        return await self.wait_for(lambda got: len(got) >= count, within)
