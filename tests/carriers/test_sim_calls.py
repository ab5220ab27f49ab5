"""Whole calls with real speech through the real engine: the sim handset over Twilio Media
Streams, a raw websocket client at 16 kHz, DTMF, barge-in, and ``relay phone call``.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only: the store is covered on
both databases by the wire-level tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from relay.calls import inbound
from relay.engine.codecs import resample
from relay.events import attach
from relay.handset import Dtmf, SimHandset, synthesize, transcribe
from relay.state import APP_STATE
from relay.store.db import Database
from relay.store.models import Agent, LifecycleEvent, TranscriptSegment
from tests.transports.support import agent_with_number, calls, lifecycle_types, phone_settings

pytestmark = pytest.mark.slow

# ``python -m`` from the repository root runs this checkout, whatever is installed.
RELAY = [sys.executable, "-m", "relay.cli"]
REPO = Path(__file__).resolve().parents[2]
GREETING = "Hello, this is the booking line."


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


class Hook:
    """The developer's webhook: verifies each request with the agent's secret."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.secret = ""
        self.requests: list[dict] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(self.secret).verify(body, dict(request.headers))
        payload = json.loads(body)
        self.requests.append(payload)
        self.arrived.set()
        data = payload["data"]
        said = data.get("dtmf") or data.get("transcript", "")
        text = next((v for k, v in self.replies.items() if k in said.lower()), "Sorry?")
        return web.json_response({"text": text})


@pytest.fixture
async def relay(database, app_client, aiohttp_server, raw_key):
    """A relay on a real port, an agent whose webhook is ``hook``, its number and a key."""

    async def make(replies: dict[str, str]):
        hook = Hook(replies)
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = await aiohttp_server(app)
        client = await app_client(phone_settings())
        key = await raw_key("proj-a")
        auth = {"Authorization": f"Bearer {key}"}
        agent, number = await agent_with_number(
            client, auth, webhookUrl=str(server.make_url("/hook")), greeting=GREETING
        )
        hook.secret = agent["webhookSecret"]
        return client, hook, key, agent, number

    return make


def base_url(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_sim_call_over_media_streams_hears_the_webhooks_answers(relay, database):
    client, hook, key, agent, number = await relay({"table": "Sure, a table for two it is."})
    report = await SimHandset(base_url(client), key).call(
        number, ["I would like to book a table for two people."]
    )

    assert "booking line" in report.greeting.lower()
    [request] = hook.requests
    assert request["event"] == "agent.message" and request["channel"] == "voice"
    assert request["data"]["callId"] == report.call_id
    assert request["data"]["to"] == number and request["data"]["direction"] == "inbound"
    assert "table" in request["data"]["transcript"].lower()
    [turn] = report.turns
    assert "table for two" in turn.heard.lower()
    assert turn.latency_ms is not None and 0 < turn.latency_ms < 15000
    assert report.ended_by == "caller"

    [call] = await calls(database)
    assert (call.status, call.connection_type) == ("completed", "sim")
    assert await lifecycle_types(database, call.id) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]
    async with database.session() as session:
        rows = (
            (
                await session.execute(
                    select(TranscriptSegment.speaker).order_by(TranscriptSegment.seq)
                )
            )
            .scalars()
            .all()
        )
        ready = await session.scalar(
            select(LifecycleEvent).where(
                LifecycleEvent.ordering_key == call.id, LifecycleEvent.type == "transcript.ready"
            )
        )
    assert "user" in rows and "agent" in rows
    # The final transcript, as the webhook gets it: every stored segment, in order.
    assert ready is not None and ready.data["callId"] == call.id
    assert [s["speaker"] for s in ready.data["segments"]] == rows
    assert "table" in ready.data["text"].lower() and ready.data["text"].startswith("Agent:")


async def test_keys_pressed_on_the_handset_reach_the_webhook_as_dtmf(relay):
    # Words Whisper tiny hears reliably over the phone band ("room service" came back as
    # "run service" about one call in five).
    client, hook, key, _, number = await relay({"42": "Connecting you to the front desk."})
    report = await SimHandset(base_url(client), key).call(number, [Dtmf("42#")])
    dtmf = [r["data"].get("dtmf") for r in hook.requests]
    assert dtmf == ["42"] or dtmf == ["42#"], hook.requests
    assert "front desk" in report.turns[0].heard.lower()


async def test_barging_in_clears_the_carriers_audio_and_marks_the_turn_interrupted(relay):
    # One long sentence (about 15 s, synthesized as one piece), so the barge-in lands while
    # audio is playing, not in a gap between sentences (nothing to clear then).
    long_answer = (
        "We are open from nine in the morning until ten at night on weekdays, from ten "
        "until eleven on Saturdays, from ten until eight on Sundays, and on public holidays "
        "we follow the Sunday hours, with the kitchen closing an hour before we do, except "
        "for Christmas Day."
    )
    client, hook, key, _, number = await relay(
        {"hours": long_answer, "tuesday": "Done, you are booked in for Tuesday evening."}
    )
    report = await SimHandset(base_url(client), key).call(
        number,
        ["What are your opening hours?", "Actually, just book me in for Tuesday."],
        barge_in_after_ms=1500,
    )
    assert report.turns[0].barged_in, report.as_dict()
    assert "christmas" not in report.turns[0].heard.lower()
    assert len(hook.requests) == 2
    history = hook.requests[1]["recentHistory"]
    cut = [h for h in history if h["role"] == "agent" and h.get("interrupted")]
    assert cut, (history, report.as_dict())
    assert cut[-1]["content"] and "Christmas" not in cut[-1]["content"]
    assert "evening" in report.turns[1].heard.lower()
    assert report.clears >= 1, report.as_dict()


async def test_a_raw_websocket_call_at_16_khz(relay, database):
    client, hook, _, agent, _ = await relay({"parcel": "Your parcel is on its way."})
    async with database.session() as session:
        project_id = (await session.get(Agent, agent["id"])).project_id
    opened = await inbound.start_websocket_call(
        client.app[APP_STATE], project_id=project_id, agent_id=agent["id"], sample_rate=16000
    )
    parts = urlsplit(opened.join_url)
    ws = await client.ws_connect(f"{parts.path}?{parts.query}")
    assert json.loads((await ws.receive()).data)["sampleRate"] == 16000
    speech = resample(synthesize("Where is my parcel?"), 8000, 16000)
    received: list[tuple[float, np.ndarray]] = []

    async def listen() -> None:
        async for msg in ws:
            if msg.type.name == "BINARY":
                received.append((time.perf_counter(), np.frombuffer(msg.data, dtype="<i2")))

    listener = asyncio.create_task(listen())
    frame = 320  # 20 ms at 16 kHz
    padded = np.concatenate([np.zeros(16000, np.int16), speech, np.zeros(16000 * 8, np.int16)])
    deadline = time.perf_counter()
    for i in range(0, len(padded), frame):
        await ws.send_bytes(padded[i : i + frame].astype("<i2").tobytes())
        if len(hook.requests) == 1 and sum(len(p) for _, p in received) > 16000 * 3:
            break
        deadline += 0.02
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    await ws.send_str('{"type": "stop"}')
    listener.cancel()
    await ws.close()

    assert "parcel" in hook.requests[0]["data"]["transcript"].lower()
    heard = np.concatenate([p for _, p in received])
    assert "parcel is on its way" in transcribe(heard, 16000).lower()


async def test_relay_phone_call_prints_what_the_agent_said(relay, tmp_path):
    client, hook, key, _, number = await relay({"weather": "It will be sunny all week."})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "phone",
        "call",
        number,
        "--say",
        "What will the weather be like?",
        "--relay",
        base_url(client),
        "--key",
        key,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert f"calling {number}" in text
    assert "you:   What will the weather be like?" in text
    answer = next(line for line in text.splitlines() if line.startswith("agent: [+"))
    assert "sunny all week" in answer.lower(), text
    assert "ended by you" in text


async def test_relay_phone_call_exits_2_when_the_relay_refuses(relay):
    client, _, key, _, _ = await relay({})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "phone",
        "call",
        "+14155550199",
        "--say",
        "hello",
        "--voice",
        "espeak",
        "--relay",
        base_url(client),
        "--key",
        key,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert "unknown_number" in err.decode()
