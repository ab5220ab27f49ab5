"""A whole Plivo call with real speech through the real engine: Plivo (the fake) asks the
relay's answer URL, streams the caller's synthesized speech over Plivo's audio stream
protocol, and plays back what the relay sends; Whisper checks what the caller heard.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only, as the sim's are."""

from __future__ import annotations

import asyncio
import os
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
    TOKEN_A,
    TOKEN_B,
    answer_url,
    origin,
    plivo_agent,
    plivo_settings,
)
from tests.carriers.test_sim_calls import GREETING, RELAY, REPO, Hook
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


async def plivo_cli(client, *args: str) -> tuple[int, str, str]:
    """``relay phone call --carrier plivo`` against the relay under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PLIVO_"))}
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "phone",
        "call",
        NUMBER_A,
        "--carrier",
        "plivo",
        "--relay",
        origin(client),
        "--public-url",
        PUBLIC_URL,
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_relay_phone_call_rings_a_plivo_number_as_plivo_would(
    database, app_client, aiohttp_server, raw_key, plivo
):
    fake, rest_url = plivo
    hook = Hook({"weather": "It will be sunny all week."})
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    client = await app_client(plivo_settings(rest_url))
    auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
    agent = await plivo_agent(client, auth, webhook_url=str(server.make_url("/hook")))
    hook.secret = agent["webhookSecret"]

    code, out, err = await plivo_cli(
        client,
        "--plivo-auth-id",
        AUTH_A,
        "--plivo-auth-token",
        TOKEN_A,
        "--say",
        "What will the weather be like?",
    )
    assert code == 0, err[-2000:]
    answer = next(line for line in out.splitlines() if line.startswith("agent: [+"))
    assert "sunny all week" in answer.lower(), out
    [call] = await calls(database)
    assert (call.connection_type, call.status) == ("plivo", "completed")

    # Another account's token is no Plivo signature for account A's URL: refused, exit 2.
    code, _, err = await plivo_cli(
        client, "--plivo-auth-id", AUTH_A, "--plivo-auth-token", TOKEN_B, "--say", "hello"
    )
    assert code == 2 and "invalid_signature" in err
    assert len(await calls(database)) == 1
