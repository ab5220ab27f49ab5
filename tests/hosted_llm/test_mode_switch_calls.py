"""Flipping an agent between webhook and hosted mode every 2 s while 4 sim calls run at once
for 60 s: no call drops, and every turn of a call is answered by the mode the call started
in, which its record names."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from relay.events import attach
from relay.handset import Dtmf, SimHandset
from relay.store.db import Database
from relay.store.models import Call
from tests.conftest import PG_DSN, PG_URL
from tests.hosted_llm.scripted_llm import ScriptedLLM
from tests.transports.support import agent_with_number, phone_settings

pytestmark = pytest.mark.slow

SOAK_S = 60.0
FLIP_S = 2.0
CONCURRENT = 4
TURNS = [Dtmf("1#"), Dtmf("2#")]


@pytest.fixture
async def database():
    """PostgreSQL: four calls' writes at once under a flipping agent; SQLite's one writer is
    not what this test is about."""
    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f"CREATE SCHEMA {schema}")
    db = Database(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    attach(db)
    try:
        yield db
    finally:
        await db.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_flipping_the_mode_never_moves_a_live_call(
    database, app_client, aiohttp_server, raw_key
):
    webhook_calls: list[str] = []
    secret: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        Webhook(secret[0]).verify(body, dict(request.headers))
        webhook_calls.append(json.loads(body)["data"]["callId"])
        return web.json_response({"text": "Webhook here."})

    app = web.Application()
    app.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(app)

    llm = ScriptedLLM()
    await llm.start(aiohttp_server)
    llm.add(*[lambda body: [("text", "Hosted here.")]] * 10_000)

    client = await app_client(
        phone_settings(llm_base_url=llm.url, llm_model="tiny", tts="espeak", stt="pocketsphinx")
    )
    key = await raw_key("proj-a")
    auth = {"Authorization": f"Bearer {key}"}
    agent, number = await agent_with_number(
        client,
        auth,
        webhookUrl=str(hook_server.make_url("/hook")),
        systemPrompt="You answer call {{call.id}}.",
        firstSpeaker="user",
    )
    secret.append(agent["webhookSecret"])
    base = str(client.make_url("")).rstrip("/")
    handset = SimHandset(
        base,
        key,
        voice="espeak",
        listen=False,
        answer_silence_ms=600,
        answer_timeout_s=15,
        greeting_timeout_s=0.3,  # the caller speaks first
    )

    flips: list[tuple[float, str]] = []
    deadline = time.monotonic() + SOAK_S
    reports = []
    failures: list[BaseException] = []

    async def flipper() -> None:
        mode = "webhook"
        next_flip = time.monotonic()
        while time.monotonic() < deadline:
            next_flip += FLIP_S
            await asyncio.sleep(max(0.0, next_flip - time.monotonic()))
            mode = "hosted" if mode == "webhook" else "webhook"
            resp = await client.patch(
                f"/v1/agents/{agent['id']}", json={"voiceMode": mode}, headers=auth
            )
            assert resp.status == 200
            flips.append((time.monotonic(), mode))

    async def caller(index: int) -> None:
        await asyncio.sleep(index * 0.7)  # callers out of step with each other and the flips
        while time.monotonic() < deadline:
            try:
                reports.append(await handset.call(number, TURNS))
            except Exception as exc:  # a dropped call: reported below
                failures.append(exc)
            await asyncio.sleep(0.3 * (len(reports) % 5))

    await asyncio.gather(flipper(), *(caller(i) for i in range(CONCURRENT)))

    async with database.session() as session:
        rows = {c.id: c for c in (await session.scalars(select(Call))).all()}
    hosted_calls = [
        m["content"].removeprefix("You answer call ").rstrip(".")
        for r in llm.requests
        for m in r["messages"][:1]
    ]
    assert not failures, failures
    assert len(flips) >= SOAK_S / FLIP_S * 0.75  # a PATCH may be slow on a busy machine
    assert len(reports) >= CONCURRENT * 2
    modes: dict[str, int] = {"webhook": 0, "hosted": 0}
    for report in reports:
        call = rows[report.call_id]
        assert call.status == "completed", (call.id, call.status, call.failure_reason)
        served = {
            m for m, ids in (("webhook", webhook_calls), ("hosted", hosted_calls)) if call.id in ids
        }
        assert served == {call.voice_mode}, (call.id, call.voice_mode, served)
        answered = webhook_calls.count(call.id) + hosted_calls.count(call.id)
        assert answered == len(TURNS), (call.id, answered)
        assert all(t.first_agent_audio_at is not None for t in report.turns), report.as_dict()
        modes[call.voice_mode] += 1
    assert modes["webhook"] and modes["hosted"], modes
