"""Who speaks first, the filler for a slow webhook, inactivity and the call's time limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from sqlalchemy import select

from relay.engine.timers import REPROMPT
from relay.store.models import Call, CallEvent, TranscriptSegment
from tests.engine.harness import Hook, RecordingLine, call_setup, make_call, start_hook

pytestmark = pytest.mark.slow


async def rows(db, model, call_id):
    async with db.session() as s:
        q = select(model).where(model.call_id == call_id).order_by(model.id)
        return (await s.scalars(q)).all()


async def agent_texts(db, call_id):
    segs = await rows(db, TranscriptSegment, call_id)
    return [s.text for s in sorted(segs, key=lambda s: s.seq) if s.speaker == "agent"]


async def test_greeting_is_spoken_first_and_is_in_the_next_history(
    aiohttp_server, engine, sqlite_db, http
):
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, first_speaker="agent", greeting="Hi, this is Ava.")
    handle = await engine.start_call(setup, line, sqlite_db, http)
    await line.wait_audio(0.0, within=5)
    await line.wait_quiet(0.5)
    assert hook.requests == []  # the greeting needs no webhook turn
    handle.push_dtmf("#")
    payload = await hook.wait_request(1)
    await handle.end()
    greeting = payload["recentHistory"][0]
    assert (greeting["role"], greeting["content"]) == ("agent", "Hi, this is Ava.")
    assert "interrupted" not in greeting


async def test_agent_first_without_greeting_asks_the_webhook(
    aiohttp_server, engine, sqlite_db, http
):
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(
        call_setup(call_id, url, first_speaker="agent"), line, sqlite_db, http
    )
    payload = await hook.wait_request(1, within=5)
    await line.wait_audio(0.0)
    await handle.end()
    assert payload["data"]["transcript"] == "" and payload["recentHistory"] == []


async def test_filler_is_spoken_once_when_the_first_chunk_is_late(
    aiohttp_server, engine, sqlite_db, http
):
    async def slow(request, payload):
        await asyncio.sleep(1.5)
        return web.json_response({"text": "Here it is."})

    hook = Hook(slow)
    url = await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, filler_after_ms=300)
    handle = await engine.start_call(setup, line, sqlite_db, http)
    pressed = time.perf_counter()
    handle.push_dtmf("#")
    heard = await line.wait_audio(pressed)
    await line.wait_quiet(0.6)
    await handle.end()
    assert 0.25 < heard - pressed < 1.2  # the filler, long before the reply at 1.5 s
    assert await agent_texts(sqlite_db, call_id) == ["One moment. Here it is."]


async def test_inactivity_reprompts_once_then_ends_the_call(
    aiohttp_server, engine, sqlite_db, http
):
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(
        call_id,
        await start_hook(aiohttp_server, Hook()),
        inactivity_timeout_seconds=1,
        inactivity_action="reprompt",
    )
    started = time.perf_counter()
    handle = await engine.start_call(setup, line, sqlite_db, http)
    reprompt_at = await line.wait_audio(started, within=5)
    status = await asyncio.wait_for(handle.wait(), 10)
    ended = time.perf_counter()
    assert status == ("completed", None)
    assert 0.9 < reprompt_at - started < 2.0
    assert ended - line.frames[-1][0] > 0.9  # a second quiet timeout after the reprompt
    assert line.hangups
    assert await agent_texts(sqlite_db, call_id) == [REPROMPT]
    events = await rows(sqlite_db, CallEvent, call_id)
    assert any(e.data == {"reason": "inactivity"} for e in events)
    assert "status -> completed" in [e.message for e in events]


async def test_inactivity_hangup_ends_at_the_first_timeout(aiohttp_server, engine, sqlite_db, http):
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(
        call_id,
        await start_hook(aiohttp_server, Hook()),
        inactivity_timeout_seconds=1,
        inactivity_action="hangup",
    )
    started = time.perf_counter()
    handle = await engine.start_call(setup, line, sqlite_db, http)
    assert await asyncio.wait_for(handle.wait(), 5) == ("completed", None)
    assert 0.9 < time.perf_counter() - started < 2.5
    assert not line.frames and line.hangups


async def test_max_duration_ends_the_call_completed(aiohttp_server, engine, sqlite_db, http):
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, await start_hook(aiohttp_server, Hook()), max_duration_seconds=1)
    handle = await engine.start_call(setup, line, sqlite_db, http)
    assert await asyncio.wait_for(handle.wait(), 5) == ("completed", None)
    async with sqlite_db.session() as s:
        call = await s.get(Call, call_id)
    assert call.status == "completed" and call.failure_reason is None
    events = await rows(sqlite_db, CallEvent, call_id)
    assert any(e.source == "engine" and e.message.startswith("max_duration") for e in events)
