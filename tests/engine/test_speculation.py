"""Speculative turns: the brain starts on the early transcript; real speech, real engines.

Endpointing is long here (3 s) so that the early transcript is always ready well before the
turn is confirmed, whatever the machine's load: the caller goes on as soon as the brain has
been asked (or after 1.6 s when it is not asked), which is still before the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from relay.api.webhook_payloads import AgentMessageVoice
from relay.calls.live import CallRunner
from relay.config import Settings
from relay.engine import VoiceEngine
from relay.store.models import TranscriptSegment, TurnMetrics
from tests.engine.harness import (
    Caller,
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    start_hook,
    transcribe,
)
from tests.hosted_llm.scripted_llm import ScriptedLLM, text

ENDPOINTING_MS = 3000
FIRST = "What are your opening hours?"
MORE = "And on Sundays?"
EARLY_ANSWER = "We are open every morning from breakfast time."
LATE_ANSWER = "On Sundays the kitchen opens for lunch."


@pytest.fixture
async def scripted(aiohttp_server: Any) -> ScriptedLLM:
    llm = ScriptedLLM()
    await llm.start(aiohttp_server)
    return llm


@pytest.fixture
async def slow_engine(speech_models: None, scripted: ScriptedLLM) -> AsyncIterator[CallRunner]:
    settings = Settings(
        endpointing_delay_ms=ENDPOINTING_MS, llm_base_url=scripted.url, llm_model="tiny"
    )
    voice = VoiceEngine(settings)
    runner = CallRunner(voice, settings)
    yield runner
    await voice.close()
    await runner.close()


async def answer_by_transcript(request: web.Request, payload: dict[str, Any]) -> web.Response:
    said = payload["data"].get("transcript", "").lower()
    return web.json_response({"text": LATE_ANSWER if "sunday" in said else EARLY_ANSWER})


async def _segments(db: Any, call_id: str) -> list[TranscriptSegment]:
    async with db.session() as s:
        rows = await s.scalars(
            select(TranscriptSegment)
            .where(TranscriptSegment.call_id == call_id)
            .order_by(TranscriptSegment.seq)
        )
        return list(rows.all())


async def _turns(db: Any, call_id: str) -> dict[str, dict[str, Any]]:
    """The stored turns' metrics by turn id."""
    async with db.session() as s:
        rows = await s.scalars(select(TurnMetrics).where(TurnMetrics.call_id == call_id))
        return {row.turn_id: row.values for row in rows.all()}


async def _until(condition: Any, within: float) -> bool:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("opted_in", [True, False])
async def test_a_speculative_turn_is_superseded_when_the_caller_goes_on(
    aiohttp_server, slow_engine, sqlite_db, http, voice, opted_in
):
    line = RecordingLine()
    hook = Hook(answer_by_transcript)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, speculative_turns=opted_in, tts="piper")
    handle = await slow_engine.start_call(setup, line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    ended = await caller.say(voice(FIRST))
    asked = await _until(lambda: hook.requests, within=1.6)
    assert time.perf_counter() - ended < ENDPOINTING_MS / 1000 - 0.5  # before the endpoint
    await caller.say(voice(MORE))
    await line.wait_audio(0.0)
    await line.wait_quiet()
    await asyncio.sleep(0.5)
    await caller.stop()
    await handle.end()

    heard = transcribe(line.audio()).lower()
    segments = await _segments(sqlite_db, call_id)
    assert "lunch" in heard and "breakfast" not in heard, heard
    assert [s.speaker for s in segments] == ["user", "agent"]
    assert "sunday" in segments[0].text.lower() and "lunch" in segments[1].text.lower()
    for request in hook.requests:
        AgentMessageVoice.model_validate(request)
    data = [r["data"] for r in hook.requests]
    if not opted_in:
        assert not asked and len(data) == 1, data
        assert "speculative" not in data[0] and "supersedes" not in data[0]
        return
    assert asked and len(data) == 2, data
    first, second = data
    assert first["speculative"] is True and "supersedes" not in first
    assert "sunday" not in first["transcript"].lower()
    assert second["supersedes"] == first["turnId"] and "sunday" in second["transcript"].lower()
    # Only the turn that was spoken is stored.
    assert list(await _turns(sqlite_db, call_id)) == [second["turnId"]]


async def test_a_confirmed_speculative_turn_speaks_its_reply_once(
    aiohttp_server, slow_engine, sqlite_db, http, voice
):
    line = RecordingLine()
    hook = Hook(answer_by_transcript)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, speculative_turns=True, tts="piper")
    handle = await slow_engine.start_call(setup, line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    ended = await caller.say(voice(FIRST))
    await hook.wait_request(1)
    asked_at = time.perf_counter()
    first_audio = await line.wait_audio(0.0)
    await line.wait_quiet()
    await asyncio.sleep(1.0)
    await caller.stop()
    await handle.end()

    assert len(hook.requests) == 1 and hook.requests[0]["data"]["speculative"] is True
    assert asked_at - ended < ENDPOINTING_MS / 1000  # asked before the turn was confirmed
    assert first_audio - ended >= ENDPOINTING_MS / 1000 - 0.3  # spoken only once it was
    assert len(line.bursts()) == 1
    heard = transcribe(line.audio()).lower()
    assert heard.count("breakfast") == 1, heard
    turns = await _turns(sqlite_db, call_id)
    assert list(turns) == [hook.requests[0]["data"]["turnId"]]
    [values] = turns.values()
    assert values["speculative"] is True and values["e2e_ms"] > 0
    # Its first sentence was synthesized while the turn was unconfirmed: no TTS wait.
    assert values["tts_first_audio_ms"] < 20, values


async def test_hosted_mode_speaks_the_early_answer_and_forgets_a_superseded_one(
    scripted, slow_engine, sqlite_db, http, voice
):
    asked: list[float] = []

    def script(body: dict[str, Any]) -> list[Any]:
        asked.append(time.perf_counter())
        said = body["messages"][-1]["content"].lower()
        return text(LATE_ANSWER if "sunday" in said else EARLY_ANSWER)

    scripted.add(script, script, script)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    setup = replace(
        call_setup(call_id, "", system_prompt="You are Ava.", tts="piper"), voice_mode="hosted"
    )
    handle = await slow_engine.start_call(setup, line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    ended = await caller.say(voice(FIRST))
    assert await _until(lambda: asked, within=2.0)  # asked before the endpoint
    await caller.say(voice(MORE))
    await line.wait_audio(0.0)
    await line.wait_quiet()
    early = len(asked)
    since = line.frames[-1][0]
    # A turn confirmed as it was speculated: its answer is the one the LLM gave early.
    ended = await caller.say(voice(FIRST))
    await line.wait_audio(since)
    await line.wait_quiet()
    await caller.stop()
    with contextlib.suppress(Exception):
        await handle.end()

    assert early == 2, early  # the first words, then the whole utterance
    assert len(asked) == 3  # the last turn: one LLM run, the speculative one
    assert asked[2] - ended < ENDPOINTING_MS / 1000
    second = scripted.messages(1)
    assert [m["role"] for m in second] == ["system", "user"]  # nothing of the first run
    assert "sunday" in second[1]["content"].lower()
    third = scripted.messages(2)
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user"]
    assert third[2]["content"] == LATE_ANSWER
    heard = transcribe(line.audio()).lower()
    assert "lunch" in heard and heard.count("breakfast") == 1, heard
    agent = [s.text for s in await _segments(sqlite_db, call_id) if s.speaker == "agent"]
    assert agent == [LATE_ANSWER, EARLY_ANSWER]
