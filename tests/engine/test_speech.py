"""Speech engines on real audio, and early STT against a caller who pauses mid-sentence."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import select

from relay.engine.speech import EspeakTTS, PiperTTS, PocketsphinxSTT, WhisperSTT
from relay.store.models import TurnMetrics
from tests.engine.harness import (
    RATE,
    Caller,
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    start_hook,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("recognizer", [WhisperSTT, PocketsphinxSTT])
async def test_recognizers_transcribe_phone_audio(recognizer, voice):
    audio = voice("I would like to book a table for Tuesday.")
    text, confidence = await recognizer().transcribe(audio, RATE)
    assert "table" in text.lower() and "tuesday" in text.lower()
    assert 0 <= confidence <= 1


@pytest.mark.parametrize("synth", [PiperTTS, EspeakTTS])
async def test_synthesizers_speak_at_the_line_rate(synth, speech_models):
    tts = synth(sample_rate=16000)
    pcm = await tts.render("Hello there.")
    assert tts.sample_rate == 16000
    assert 0.5 < len(pcm) / 16000 < 3.0
    assert np.abs(pcm).max() > 3000


async def test_caller_pausing_mid_sentence_is_one_turn_and_early_stt_is_redone(
    aiohttp_server, engine, sqlite_db, http, voice
):
    pause = np.zeros(int(RATE * 0.3), np.int16)  # longer than the first silence, < endpointing
    utterance = np.concatenate(
        [voice("I want to book a table."), pause, voice("For Friday evening.")]
    )
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    line = RecordingLine()
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.2)
    done = await caller.say(utterance)
    await line.wait_audio(done)
    await line.wait_quiet(0.5)
    await caller.stop()
    await handle.end()
    assert len(hook.requests) == 1
    said = hook.requests[0]["data"]["transcript"].lower()
    assert "table" in said and "friday" in said
    async with sqlite_db.session() as s:
        values = (await s.scalars(select(TurnMetrics))).one().values
    assert values["early_stt_discarded"] >= 1
    print("early STT redone:", values)
