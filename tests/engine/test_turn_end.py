"""A caller who pauses mid-sentence is waited for; real speech through the real engines."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from relay.engine.turn_end import sounds_unfinished
from tests.engine.harness import Caller, Hook, RecordingLine, call_setup, make_call, start_hook


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("I'd like a table for", True),
        ("I'd like to book, um", True),
        ("I'd like to book the...", True),
        ("Can I speak to the", True),
        ("A table for two tomorrow evening.", False),
        ("What are your opening hours?", False),
        ("", False),
    ],
)
def test_a_transcript_that_stops_on_a_dangling_word_sounds_unfinished(text, unfinished):
    assert sounds_unfinished(text, "en-US") is unfinished


def test_a_language_without_a_word_list_is_judged_by_punctuation_only():
    assert not sounds_unfinished("Quiero una mesa para", "es")
    assert sounds_unfinished("Quiero una mesa para...", "es")


@pytest.mark.parametrize(("hold_ms", "turns"), [(700, 1), (0, 2)])
async def test_a_pause_mid_sentence_is_not_a_turn(
    aiohttp_server, engine, sqlite_db, http, voice, hold_ms, turns
):
    line = RecordingLine()
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, unfinished_turn_ms=hold_ms)
    handle = await engine.start_call(setup, line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    pause = np.zeros(int(0.7 * 8000), np.int16)
    speech = np.concatenate(
        [voice("I'd like a table for"), pause, voice("two people tomorrow evening.")]
    )
    await caller.say(speech)
    await hook.wait_request(1)
    await asyncio.sleep(2.5)  # time for a second turn, were there one
    await caller.stop()
    await handle.end()

    transcripts = [r["data"]["transcript"].lower() for r in hook.requests]
    assert len(transcripts) == turns, transcripts
    assert "table" in transcripts[0] and "evening" in transcripts[-1]
