"""Fixtures of the carrier tests: a fake Plivo and a webhook that answers every text."""

from __future__ import annotations

import pytest
from aiohttp import web

from relay.handset.fake_plivo import FakePlivo
from tests.carriers.plivo_support import AUTH_A, AUTH_B, NUMBER_A, NUMBER_B, TOKEN_A, TOKEN_B


@pytest.fixture
async def plivo(aiohttp_server) -> tuple[FakePlivo, str]:
    fake = FakePlivo(AUTH_A, TOKEN_A, {NUMBER_A})
    fake.add_account(AUTH_B, TOKEN_B, {NUMBER_B})
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def text_hook(aiohttp_server) -> str:
    """An agent's webhook that answers every text."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"text": "Sure."})

    app = web.Application()
    app.router.add_post("/hook", answer)
    return str((await aiohttp_server(app)).make_url("/hook"))
