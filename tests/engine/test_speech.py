"""Speech engines on real audio, and early STT against a caller who pauses mid-sentence."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import select

from relay.engine.speech import (
    EspeakTTS,
    PiperTTS,
    PocketsphinxSTT,
    WhisperSTT,
    acoustic_end,
    speech_floor,
)
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


# Piper speaks each test session's lines anew (its model draws noise), and Pocketsphinx, the
# small fallback recognizer, sometimes hears "Tuesday" as "two states" on 8 kHz audio: it is
# held to the words it gets every time.
@pytest.mark.parametrize(
    ("recognizer", "words"),
    [(WhisperSTT, ("table", "tuesday")), (PocketsphinxSTT, ("book", "table"))],
)
async def test_recognizers_transcribe_phone_audio(recognizer, words, voice):
    audio = voice("I would like to book a table for Tuesday.")
    text, confidence = await recognizer().transcribe(audio, RATE)
    assert all(word in text.lower() for word in words), text
    assert 0 <= confidence <= 1


async def test_whisper_hears_a_turn_without_encoding_a_30_s_window(voice):
    from relay.engine import models
    from relay.engine.codecs import resample

    audio = resample(voice("Do you have a table for Tuesday?"), RATE, 16000)
    fitted = models._whisper_short(audio.astype(np.float32) / 32768.0, 300)
    assert fitted is not None  # trusted, not redone the 30 s way
    assert "table" in fitted[0].lower() and "tuesday" in fitted[0].lower()
    assert models.whisper_transcribe(np.zeros(16000, np.int16))[0] == ""


async def test_a_fragment_before_a_pause_is_heard_without_the_30_s_window(voice, monkeypatch):
    """ "Great," alone: a window fitted to it tends to loop ("Great. Great. Great."); the
    10 s window gets it, and the standard 30 s way is not needed."""
    from relay.engine import models
    from relay.engine.codecs import resample

    line = voice("Great, please put it under the name Johnson.")
    loud = np.flatnonzero(np.abs(line) > 1000)
    fragment = line[: loud[0] + int(0.5 * RATE)]  # the first half second of speech
    full_runs = []
    real_full = models._whisper_full
    monkeypatch.setattr(models, "_whisper_full", lambda a: full_runs.append(1) or real_full(a))
    text, _ = models.whisper_transcribe(resample(fragment, RATE, 16000))
    assert "great" in text.lower() and text.lower().count("great") == 1
    assert not full_runs


def test_a_recognition_nobody_wants_any_more_skips_its_retries(voice):
    import threading

    from relay.engine import models
    from relay.engine.codecs import resample

    stop = threading.Event()
    stop.set()
    audio = resample(voice("Do you have a table for Tuesday?"), RATE, 16000)
    assert models.whisper_transcribe(audio, stop) == ("", 0.0)


def test_a_short_window_that_runs_on_and_repeats_itself_is_not_trusted():
    from relay.engine import models

    assert models._repeats("Let me look that up. Let me look that")
    assert models._repeats("your order has shipped, your order has")
    assert not models._repeats("Let me look that up.")
    assert not models._repeats("A table for two, for two nights")  # two words twice: speech


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


@pytest.mark.parametrize("synth", [PiperTTS, EspeakTTS])
async def test_synthesizers_speak_at_the_line_rate(synth, speech_models):
    tts = synth(sample_rate=16000)
    pcm = await tts.render("Hello there.")
    assert tts.sample_rate == 16000
    assert 0.5 < len(pcm) / 16000 < 3.0
    assert np.abs(pcm).max() > 3000


async def _synthesized(tts, text: str) -> np.ndarray:
    parts = []
    async with tts.synthesize(text) as stream:
        async for event in stream:
            parts.append(np.frombuffer(event.frame.data, dtype=np.int16))
    return np.concatenate(parts)


async def test_a_phrase_said_again_comes_from_the_cache(speech_models):
    from relay.engine import models

    tts = PiperTTS(sample_rate=8000)
    text = "Thanks for calling the cache test line."
    hits, misses = models.phrases.hits, models.phrases.misses
    first = await _synthesized(tts, text)
    assert (models.phrases.hits, models.phrases.misses) == (hits, misses + 1)
    again = await _synthesized(tts, text)
    assert models.phrases.hits == hits + 1
    assert np.array_equal(first, again)  # Piper is random: a new synthesis would differ
    other = await _synthesized(PiperTTS(sample_rate=16000), text)  # another rate: made anew
    assert models.phrases.misses == misses + 2 and len(other) > len(first)


def test_the_phrase_cache_keeps_to_its_budget_dropping_the_least_recently_used():
    from relay.engine.models import PhraseCache

    cache = PhraseCache(max_bytes=3000)
    for name in "abc":
        cache.put(("v", 8000, name), np.zeros(500, np.int16))  # 1000 bytes each
    assert cache.get(("v", 8000, "a")) is not None  # a is now the most recently used
    cache.put(("v", 8000, "d"), np.zeros(500, np.int16))
    assert cache.get(("v", 8000, "b")) is None  # the least recently used went
    assert all(cache.get(("v", 8000, k)) is not None for k in "acd")
    assert cache.bytes == 3000
    big = cache.put(("v", 8000, "e"), np.zeros(5000, np.int16))  # over budget: not kept
    assert cache.get(("v", 8000, "e")) is None and not big.flags.writeable
    cache.resize(0)
    assert cache.bytes == 0 and cache.get(("v", 8000, "a")) is None


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


def test_synthesis_takes_the_earliest_deadline_first():
    import threading
    import time

    from relay.engine.models import DeadlineExecutor

    pool = DeadlineExecutor(1, "test-tts", 0)
    release = threading.Event()
    order: list[str] = []
    busy = pool.submit(release.wait, 10)  # the one thread is taken: the rest queue
    now = time.monotonic()
    later = pool.submit_due(now + 2.0, order.append, "second sentence, due in 2 s")
    first = pool.submit(order.append, "first words of another reply, due now")
    sooner = pool.submit_due(now + 0.5, order.append, "second sentence, due in 0.5 s")
    dropped = pool.submit_due(now, order.append, "cancelled while waiting")
    assert dropped.cancel()
    release.set()
    for future in (busy, later, first, sooner):
        future.result(timeout=5)
    assert order == [
        "first words of another reply, due now",
        "second sentence, due in 0.5 s",
        "second sentence, due in 2 s",
    ]
    pool.shutdown()
