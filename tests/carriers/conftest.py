"""Fixtures of the carrier tests: a fake Telnyx (:mod:`relay.handset.fake_telnyx`) with two
accounts and a relay pointed at it; a fake Plivo; a webhook that answers every text."""

from __future__ import annotations

import pytest
from aiohttp import web

from relay.config import Settings
from relay.handset.fake_plivo import FakePlivo
from relay.handset.fake_telnyx import FakeTelnyx, FakeTelnyxAccount
from tests.carriers import plivo_support as pv
from tests.carriers.telnyx_support import KEY, NUMBER_A, NUMBER_B, PUBLIC_URL


@pytest.fixture
def fake() -> FakeTelnyx:
    return FakeTelnyx()


@pytest.fixture
async def telnyx_url(fake, aiohttp_server) -> str:
    return str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")


@pytest.fixture
def account_a(fake) -> FakeTelnyxAccount:
    return fake.add_account({NUMBER_A})


@pytest.fixture
def account_b(fake) -> FakeTelnyxAccount:
    return fake.add_account({NUMBER_B})


@pytest.fixture
def telnyx_settings(telnyx_url) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        encryption_key=KEY,
        telnyx_api_base_url=telnyx_url,
    )


@pytest.fixture
async def plivo(aiohttp_server) -> tuple[FakePlivo, str]:
    fake = FakePlivo(pv.AUTH_A, pv.TOKEN_A, {pv.NUMBER_A})
    fake.add_account(pv.AUTH_B, pv.TOKEN_B, {pv.NUMBER_B})
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
