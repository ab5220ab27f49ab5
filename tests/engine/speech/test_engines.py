"""The speech engines on real audio: recognizers, Whisper's fitted window, synthesizers,
the phrase cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from relay.engine import speech
from relay.engine.codecs import resample
from relay.engine.speech import EspeakTTS, PiperTTS, PocketsphinxSTT, WhisperSTT
from tests.engine.harness import RATE

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
    audio = resample(voice("Do you have a table for Tuesday?"), RATE, 16000)
    fitted = speech.whisper._whisper_short(audio.astype(np.float32) / 32768.0, 300)
    assert fitted is not None  # trusted, not redone the 30 s way
    assert "table" in fitted[0].lower() and "tuesday" in fitted[0].lower()
    assert speech.whisper_transcribe(np.zeros(16000, np.int16))[0] == ""


async def test_a_fragment_before_a_pause_is_heard_without_the_30_s_window(voice, monkeypatch):
    """ "Great," alone: a window fitted to it tends to loop ("Great. Great. Great."); the
    10 s window gets it, and the standard 30 s way is not needed."""

    line = voice("Great, please put it under the name Johnson.")
    loud = np.flatnonzero(np.abs(line) > 1000)
    fragment = line[: loud[0] + int(0.5 * RATE)]  # the first half second of speech
    full_runs = []
    real_full = speech.whisper._whisper_full
    monkeypatch.setattr(
        speech.whisper, "_whisper_full", lambda *a: full_runs.append(1) or real_full(*a)
    )
    text, _ = speech.whisper_transcribe(resample(fragment, RATE, 16000))
    assert "great" in text.lower() and text.lower().count("great") == 1
    assert not full_runs


def test_a_recognition_nobody_wants_any_more_skips_its_retries(voice):
    stop = threading.Event()
    stop.set()
    audio = resample(voice("Do you have a table for Tuesday?"), RATE, 16000)
    assert speech.whisper_transcribe(audio, stop) == ("", 0.0)


def test_a_short_window_that_runs_on_and_repeats_itself_is_not_trusted():
    assert speech.whisper._repeats("Let me look that up. Let me look that")
    assert speech.whisper._repeats("your order has shipped, your order has")
    assert not speech.whisper._repeats("Let me look that up.")
    assert not speech.whisper._repeats("A table for two, for two nights")  # two words twice: speech


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
    tts = PiperTTS(sample_rate=8000)
    text = "Thanks for calling the cache test line."
    hits, misses = speech.phrases.hits, speech.phrases.misses
    first = await _synthesized(tts, text)
    assert (speech.phrases.hits, speech.phrases.misses) == (hits, misses + 1)
    again = await _synthesized(tts, text)
    assert speech.phrases.hits == hits + 1
    assert np.array_equal(first, again)  # Piper is random: a new synthesis would differ
    other = await _synthesized(PiperTTS(sample_rate=16000), text)  # another rate: made anew
    assert speech.phrases.misses == misses + 2 and len(other) > len(first)
