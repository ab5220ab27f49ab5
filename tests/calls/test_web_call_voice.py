"""Web calls with real speech through the real engine: a page's aiortc peer speaks Piper's
voice over Opus, the webhook hears the words, the page hears the agent (Whisper over what it
received), its data channel shows both sides, and a barge-in from the page cuts the agent.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only: the store is covered on
both databases by ``tests/api/test_web_calls.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from relay.engine.codecs import resample
from relay.events import attach
from relay.handset import synthesize, transcribe
from relay.handset.web import RATE, WebPage
from relay.store.db import Database
from tests.carriers.test_sim_calls import GREETING, Hook
from tests.transports.support import agent_with_number, calls, lifecycle_types, phone_settings

pytestmark = pytest.mark.slow

LONG = (
    "Our restaurant opens at noon on weekdays and at ten in the morning on weekends, and "
    "the kitchen keeps serving until half past ten at night, every single day of the year."
)


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


@pytest.fixture
async def web_relay(database, app_client, aiohttp_server, raw_key):
    async def make(replies: dict[str, str], **agent_fields):
        hook = Hook(replies)
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = await aiohttp_server(app)
        client = await app_client(phone_settings())
        auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
        agent, _ = await agent_with_number(
            client, auth, webhookUrl=str(server.make_url("/hook")), **agent_fields
        )
        hook.secret = agent["webhookSecret"]
        resp = await client.post(
            "/v1/calls", json={"agentId": agent["id"], "connectionType": "webrtc"}, headers=auth
        )
        assert resp.status == 201, await resp.text()
        return client, hook, await resp.json(), auth

    return make


def speech48(text: str):
    return resample(synthesize(text), 8000, RATE)


async def heard_text(page, since: float, until: float | None = None) -> str:
    pcm = page.audio(since) if until is None else page.audio(since)[: int((until - since) * RATE)]
    return await asyncio.get_running_loop().run_in_executor(None, transcribe, pcm, RATE)


async def test_a_web_call_hears_the_caller_and_the_page_hears_the_agent(web_relay, database):
    client, hook, call, auth = await web_relay(
        {"table": "Sure, a table for two it is."}, greeting=GREETING
    )
    page = await WebPage.join(client, "/media/webrtc", call["token"])
    await page.wait_event(lambda e: e.get("role") == "agent" and e.get("final"), within=30)

    page.mic.say(speech48("I would like to book a table for two people."))
    await page.mic.spoken.wait()
    spoke_at = page.mic.last_loud_at
    await page.wait_event(lambda e: "table for two" in e.get("text", "").lower(), within=30)
    reply = await page.wait_event(
        lambda e: e.get("role") == "agent" and e.get("final") and "two" in e["text"].lower(),
        within=30,
    )
    [request] = hook.requests
    assert request["data"]["callId"] == call["id"]
    assert "table" in request["data"]["transcript"].lower()
    user = [e for e in page.events if e.get("role") == "user" and e.get("final")]
    assert user and "table" in user[0]["text"].lower()
    assert not reply["interrupted"]
    states = [e["state"] for e in page.events if e["type"] == "agent_state"]
    assert {"listening", "thinking", "speaking"} <= set(states)

    heard = (await heard_text(page, spoke_at)).lower()
    assert "table for two" in heard, heard
    # The relay ends the call (here by the API): the page is told before the connection closes.
    resp = await client.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 200, await resp.text()
    ended = await page.wait_event(lambda e: e["type"] == "ended", within=15)
    assert ended == {"type": "ended", "status": "completed", "reason": None}
    await page.close()
    for _ in range(200):
        [row] = await calls(database)
        if row.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert (row.status, row.connection_type) == ("completed", "webrtc")
    assert await lifecycle_types(database, call["id"]) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]


async def test_barging_in_from_the_page_cuts_the_agent(web_relay):
    client, hook, call, _ = await web_relay(
        {"opening": LONG}, interruptible=True, firstSpeaker="user"
    )
    page = await WebPage.join(client, "/media/webrtc", call["token"])
    await page.wait_event(lambda e: e.get("state") == "listening", within=30)
    page.mic.say(speech48("What are your opening hours?"))
    await page.wait_event(lambda e: "restaurant" in e.get("text", "").lower(), within=30)
    await asyncio.sleep(1.5)  # well into the long reply
    page.mic.say(speech48("Sorry, stop, actually I want to book a table."))
    cut = await page.wait_event(
        lambda e: e.get("role") == "agent" and e.get("final") and e.get("interrupted"), within=30
    )
    assert "ten at night" not in cut["text"]
    await page.mic.spoken.wait()
    # The agent's cut reply is not heard after the barge-in: whatever the page hears next is
    # the answer to the new turn (the webhook's "Sorry?"), never the rest of the hours.
    await hook_turns(hook, 2)
    later = (await heard_text(page, page.mic.last_loud_at)).lower()
    assert "half past ten" not in later and "every single day" not in later, later
    await page.close()


async def hook_turns(hook, count: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while len(hook.requests) < count:
        assert time.monotonic() < deadline, hook.requests
        await asyncio.sleep(0.05)
