"""A whole Telnyx call with real speech: the fake Telnyx rings one of our numbers, the relay
answers with a media stream, and a caller (Piper) talks with the agent over Telnyx's media
protocol while Whisper listens to the answers. Slow, and SQLite only: the store is covered on
both databases by the wire-level tests (test_telnyx.py, test_telnyx_media.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.config import Settings
from relay.events import attach
from relay.handset import SimHandset
from relay.store.db import Database
from tests.carriers.telnyx_support import CALLER, NUMBER_A, bound_number, deliver_to_relay
from tests.transports.support import calls, lifecycle_types, wait_for

pytestmark = pytest.mark.slow
GREETING = "Hello, this is the booking line."


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


@pytest.fixture
def settings(telnyx_settings) -> Settings:
    return telnyx_settings


class Hook:
    """The developer's webhook: verifies each request with the agent's secret."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.secret = ""
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(self.secret).verify(body, dict(request.headers))
        self.requests.append(json.loads(body))
        return web.json_response({"text": self.reply})


async def test_a_telnyx_call_carries_real_speech_both_ways(
    client, auth, fake, account_a, database, aiohttp_server
):
    hook = Hook("A table for two it is.")
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    agent, _, _ = await bound_number(
        client, auth, fake, account_a, NUMBER_A, str(server.make_url("/hook"))
    )
    resp = await client.patch(
        f"/v1/agents/{agent['id']}", json={"greeting": GREETING}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    hook.secret = agent["webhookSecret"]
    deliver_to_relay(fake, client)
    # A busy machine can pause the agent's speech: the caller waits a little longer for it.
    fake.handset = SimHandset("http://unused", "unused", answer_silence_ms=2500)

    call = await fake.place_call(
        account_a, CALLER, NUMBER_A, ["I would like to book a table for two people."]
    )
    await asyncio.wait_for(call.done.wait(), 120)
    await fake.settle()

    report = call.report
    assert report is not None, (call.hangup_cause, call.error)
    assert "booking line" in report.greeting.lower()
    [turn] = report.turns
    assert "table for two" in turn.heard.lower(), turn  # the caller heard the answer
    [request] = hook.requests
    data = request["data"]
    assert (data["from"], data["to"], data["direction"]) == (CALLER, NUMBER_A, "inbound")
    assert "table" in data["transcript"].lower()  # the webhook got the caller's words
    [row] = await calls(database)

    async def completed() -> bool:
        return (await calls(database))[0].status == "completed"

    await wait_for(completed, 15)
    assert (row.connection_type, row.carrier_call_id) == ("telnyx", call.call_control_id)
    assert (await lifecycle_types(database, row.id))[:4] == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
    ]
    # Telnyx told the relay the caller hung up; the relay had nothing left to end.
    assert [w[0] for w in fake.webhooks] == ["call.initiated", "call.hangup"]


async def test_an_outbound_telnyx_call_rings_is_answered_and_carries_real_speech(
    client, auth, fake, account_a, database, aiohttp_server
):
    hook = Hook("Great, see you on Tuesday.")
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    agent, _, _ = await bound_number(
        client, auth, fake, account_a, NUMBER_A, str(server.make_url("/hook"))
    )
    await client.patch(f"/v1/agents/{agent['id']}", json={"greeting": GREETING}, headers=auth)
    hook.secret = agent["webhookSecret"]
    deliver_to_relay(fake, client)
    fake.handset = SimHandset("http://unused", "unused", answer_silence_ms=2500)
    fake.callees[CALLER] = ["Yes, Tuesday works for me."]

    resp = await client.post("/v1/calls", json={"agentId": agent["id"], "to": CALLER}, headers=auth)
    assert resp.status == 202, await resp.text()
    call_id = (await resp.json())["id"]
    await wait_for(lambda: bool(fake.calls), 10)
    [call] = fake.calls.values()
    await asyncio.wait_for(call.done.wait(), 120)
    await fake.settle()

    report = call.report
    assert report is not None, (call.hangup_cause, call.error)
    assert "booking line" in report.greeting.lower()  # the callee heard the agent
    assert "tuesday" in report.turns[0].heard.lower()
    [request] = hook.requests
    assert request["data"]["callId"] == call_id
    assert request["data"]["direction"] == "outbound"
    assert "tuesday" in request["data"]["transcript"].lower()  # the webhook got the words

    async def completed() -> bool:
        return (await calls(database))[0].status == "completed"

    await wait_for(completed, 15)
    assert (await lifecycle_types(database, call_id))[:5] == [
        "call.queued",
        "call.connecting",
        "call.ringing",
        "call.in_progress",
        "call.completed",
    ]
