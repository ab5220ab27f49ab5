"""An outbound Twilio call with real speech, end to end on one machine: the API places it,
the fake Twilio rings and answers, its callee speaks over Media Streams, the agent's
webhook gets the words and the callee hears the reply.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only, as test_sim_calls.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from relay.app import create_app
from relay.config import Settings
from relay.events import attach
from relay.handset.fake_twilio_voice import Callee
from relay.store.db import Database
from tests.conftest import DEPLOYMENT_SID, DEPLOYMENT_TOKEN, deployment_twilio
from tests.transports.support import agent_with_number, lifecycle_types, wait_for

pytestmark = pytest.mark.slow

PUBLIC_URL = "https://relay.example.com"
CALLEE = "+14155550123"
GREETING = "Hello, this is the booking line."


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


@pytest.fixture
def settings(twilio_rest) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        outbound_ring_timeout_seconds=10,
        **deployment_twilio(twilio_rest[1]),
    )


async def test_an_outbound_twilio_call_carries_speech_both_ways(
    client, auth, twilio_rest, aiohttp_server, database
):
    fake = twilio_rest[0]
    fake.deliver_to = (PUBLIC_URL, str(client.make_url("")).rstrip("/"))
    heard: list[dict] = []
    secret = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(secret["value"]).verify(body, dict(request.headers))
        heard.append(json.loads(body))
        return web.json_response({"text": "Sure, a table for two it is."})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    agent, number = await agent_with_number(
        client, auth, webhookUrl=str(server.make_url("/hook")), greeting=GREETING
    )
    secret["value"] = agent["webhookSecret"]
    # Patient: on a loaded machine the agent's sentences may come seconds apart.
    fake.voice.callees[CALLEE] = Callee(
        ["I would like to book a table for two people."], answer_silence_ms=3000
    )

    resp = await client.post("/v1/calls", json={"agentId": agent["id"], "to": CALLEE}, headers=auth)
    assert resp.status == 202, await resp.text()
    call_id = (await resp.json())["id"]
    await wait_for(lambda: fake.voice.calls, within=10)
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 120)  # rang, answered, talked, hung up

    report = placed.report
    assert report is not None and report.call_id == call_id
    assert "booking line" in report.greeting.lower()
    [turn] = report.turns
    assert "table for two" in turn.heard.lower()
    [request] = heard
    data = request["data"]
    assert (data["callId"], data["direction"], data["from"], data["to"]) == (
        call_id,
        "outbound",
        number,
        CALLEE,
    )
    assert "table" in data["transcript"].lower()
    assert [s for s, _ in placed.callbacks] == ["initiated", "ringing", "in-progress", "completed"]
    assert all(code == 204 for _, code in placed.callbacks)
    assert placed.updates == []  # the callee hung up: nothing for the relay to end at Twilio

    for _ in range(100):
        detail = await (await client.get(f"/v1/calls/{call_id}", headers=auth)).json()
        if detail["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert detail["status"] == "completed"
    assert (await lifecycle_types(database, call_id))[:5] == [
        "call.queued",
        "call.connecting",
        "call.ringing",
        "call.in_progress",
        "call.completed",
    ]


# ``python -m`` from the repository root runs this checkout, whatever is installed.
RELAY = [sys.executable, "-m", "relay.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def reachable(database, aiohttp_client, unused_tcp_port, twilio_rest):
    """A relay whose public URL is where it listens, so a caller can sign for it."""
    port = unused_tcp_port
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=url,
        **deployment_twilio(twilio_rest[1]),
    )
    client = await aiohttp_client(TestServer(create_app(settings, db=database), port=port))
    return client, url


async def phone_call_as_twilio(url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "phone",
        "call",
        *args,
        "--carrier",
        "twilio",
        "--relay",
        url,
        "--account-sid",
        DEPLOYMENT_SID,
        "--auth-token",
        DEPLOYMENT_TOKEN,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_relay_phone_call_as_twilio_talks_to_the_numbers_agent(
    reachable, auth, aiohttp_server
):
    client, url = reachable
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        return web.json_response({"text": "It will be sunny all week."})

    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    _, number = await agent_with_number(
        client, auth, webhookUrl=str(server.make_url("/hook")), greeting=GREETING
    )
    code, out, err = await phone_call_as_twilio(
        url, number, "--say", "What will the weather be like?"
    )
    assert code == 0, err[-2000:]
    assert f"calling {number} as Twilio" in out
    answer = next(line for line in out.splitlines() if line.startswith("agent: [+"))
    assert "sunny" in answer.lower(), out


async def test_relay_phone_call_as_twilio_exits_2_for_a_number_not_in_service(reachable):
    _, url = reachable
    code, out, err = await phone_call_as_twilio(url, "+14155550177", "--say", "Hello?")
    assert code == 2
    assert "not in service" in err and "(call_refused)" in err
