"""A whole Plivo call with real speech through the real engine: Plivo (the fake) asks the
relay's answer URL, streams the caller's synthesized speech over Plivo's audio stream
protocol, and plays back what the relay sends; Whisper checks what the caller heard.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only, as the sim's are."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import aiohttp
import pytest
from aiohttp import web

from relay.events import attach
from relay.handset.fake_plivo import PlivoHandset
from relay.store.db import Database
from tests.carriers.plivo_support import (
    AUTH_A,
    NUMBER_A,
    PUBLIC_URL,
    answer_url,
    origin,
    plivo_agent,
    plivo_settings,
)
from tests.carriers.test_sim_calls import GREETING, Hook
from tests.transports.support import calls, lifecycle_types

pytestmark = pytest.mark.slow


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


async def test_a_plivo_call_carries_real_speech_both_ways(
    database, app_client, aiohttp_server, raw_key, plivo
):
    fake, rest_url = plivo
    hook = Hook({"table": "Sure, a table for two it is."})
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    client = await app_client(plivo_settings(rest_url))
    fake.deliver_to = (PUBLIC_URL, origin(client))
    auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
    agent = await plivo_agent(
        client, auth, webhook_url=str(server.make_url("/hook")), greeting=GREETING
    )
    hook.secret = agent["webhookSecret"]

    # A generous pause before speaking: the machine is shared, the TTS may stall mid-greeting.
    handset = PlivoHandset(fake, answer_url(), fake.accounts[AUTH_A], answer_silence_ms=2500)
    report = await handset.call(NUMBER_A, ["I would like to book a table for two people."])

    assert "booking line" in report.greeting.lower()
    [request] = hook.requests
    assert request["data"]["callId"] == report.call_id
    assert request["data"]["to"] == NUMBER_A and request["data"]["direction"] == "inbound"
    assert "table" in request["data"]["transcript"].lower()
    [turn] = report.turns
    assert "table for two" in turn.heard.lower()
    assert turn.latency_ms is not None and 0 < turn.latency_ms < 15000

    [call] = await calls(database)
    assert (call.status, call.connection_type) == ("completed", "plivo")
    assert call.carrier_call_id == handset.streamed.call_uuid
    assert await lifecycle_types(database, call.id) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]
    async with aiohttp.ClientSession() as http:
        await fake.stream_ended(http, handset.streamed, fake.accounts[AUTH_A])
    assert [c.tag for c in ET.fromstring(handset.streamed.after or "")] == ["Hangup"]
