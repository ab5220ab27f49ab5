"""Fixtures of the Telnyx tests: a fake Telnyx (:mod:`relay.handset.fake_telnyx`) on a real
port, with two accounts, and a relay pointed at it."""

from __future__ import annotations

import pytest

from relay.config import Settings
from relay.handset.fake_telnyx import FakeTelnyx, FakeTelnyxAccount
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
