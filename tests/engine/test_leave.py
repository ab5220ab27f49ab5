"""``CallHandle.leave``: what an answering machine gets (relay.calls.voicemail). The agent
is cut off, the message is spoken in the call's voice (no barge-in), and the call ends
``completed`` with the given detail in its event log."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from relay.store.models import Call, CallEvent
from tests.engine.harness import Hook, RecordingLine, call_setup, make_call, start_hook, transcribe

pytestmark = pytest.mark.slow

GREETING = "Hello, this is Ava from the dental clinic, calling about your appointment next week."
MESSAGE = "Please call the clinic back about Tuesday."


async def ended(db, call_id: str) -> tuple[Call, list[str]]:
    async with db.session() as session:
        call = await session.get(Call, call_id)
        events = (
            await session.scalars(select(CallEvent.message).where(CallEvent.call_id == call_id))
        ).all()
    return call, list(events)


async def test_a_message_is_spoken_over_the_agent_and_the_call_ends(
    aiohttp_server, engine, sqlite_db, http
):
    line = RecordingLine()
    url = await start_hook(aiohttp_server, Hook())
    call_id = await make_call(sqlite_db)
    setup = call_setup(
        call_id, url, first_speaker="agent", greeting=GREETING, interruptible=False, tts="piper"
    )
    handle = await engine.start_call(setup, line, sqlite_db, http)
    await line.wait_audio(0.0)  # the greeting has started (to the machine)
    left_at = time.perf_counter()
    await handle.leave(MESSAGE, "voicemail: left the message")
    status, reason = await asyncio.wait_for(handle.wait(), 30)
    assert (status, reason) == ("completed", None)
    heard = transcribe(line.audio(left_at)).lower()
    assert "clinic back" in heard and "tuesday" in heard, heard
    assert "next week" not in heard  # the greeting was cut, not finished first
    assert line.hangups
    call, events = await ended(sqlite_db, call_id)
    assert call.status == "completed" and "voicemail: left the message" in events


async def test_leaving_without_a_message_ends_the_call_at_once(
    aiohttp_server, engine, sqlite_db, http
):
    line = RecordingLine()
    url = await start_hook(aiohttp_server, Hook())
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, first_speaker="agent", greeting=GREETING)
    handle = await engine.start_call(setup, line, sqlite_db, http)
    await line.wait_audio(0.0)
    began = time.perf_counter()
    await handle.leave(None, "voicemail: hung up")
    assert await asyncio.wait_for(handle.wait(), 10) == ("completed", None)
    assert time.perf_counter() - began < 5
    assert not line.loud_frames(began + 0.5)  # nothing more was said
    _, events = await ended(sqlite_db, call_id)
    assert "voicemail: hung up" in events
