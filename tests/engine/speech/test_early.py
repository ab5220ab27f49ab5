"""Early STT: the end of speech where the voice died away, and a caller who pauses
mid-sentence."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import select

from relay.engine.speech import acoustic_end, speech_floor
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


def _tone(seconds: float, level: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * 300 * t) * level * np.sqrt(2)).astype(np.int16)


def test_end_of_speech_is_where_the_voice_died_away_not_where_the_vad_let_go():
    audio = np.concatenate([_tone(1.0, 5000), _tone(0.3, 0)])  # speech, then 0.3 s quiet
    floor = speech_floor(audio, RATE)
    end = acoustic_end(audio, RATE, floor, vad_end=99.85, audio_end=100.0)  # VAD 150 ms late
    assert end == (pytest.approx(99.7, abs=0.001), True)
    # at most END_LOOKBACK_S (0.3 s) earlier than the VAD's estimate
    assert acoustic_end(audio, RATE, floor, vad_end=100.05, audio_end=100.0)[0] == 99.75


def test_end_of_speech_over_noise_is_the_vads():
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 1500, int(RATE * 0.3))
    audio = np.concatenate([_tone(1.0, 5000) + rng.normal(0, 1500, RATE), noise]).astype(np.int16)
    floor = speech_floor(audio, RATE)
    assert acoustic_end(audio, RATE, floor, vad_end=99.85, audio_end=100.0) == (99.85, False)


@pytest.mark.slow
async def test_caller_pausing_mid_sentence_is_one_turn_and_early_stt_is_redone(
    aiohttp_server, engine, sqlite_db, http, voice
):
    # Piper ends and starts its audio with ~0.24 s of quiet of its own: the caller is silent
    # for ~0.39 s, longer than the first silence (0.15 s), shorter than endpointing (0.5 s).
    pause = np.zeros(int(RATE * 0.15), np.int16)
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
