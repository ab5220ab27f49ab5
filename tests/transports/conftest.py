"""A relay with Twilio configured whose engine is scripted by the test."""

from __future__ import annotations

import pytest

from relay.calls.media import MEDIA
from tests.transports.support import ScriptedEngine, phone_settings


@pytest.fixture
async def phone(database, app_client):
    # ``database`` first, so it is torn down after the app (whose calls end at shutdown).
    client = await app_client(phone_settings())
    client.app[MEDIA].engine = ScriptedEngine()
    return client


@pytest.fixture
def engine(phone) -> ScriptedEngine:
    return phone.app[MEDIA].engine
