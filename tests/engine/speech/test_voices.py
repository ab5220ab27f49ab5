"""What the relay says it can speak and hear is what it installed, and settings are chosen
or refused by it."""

from __future__ import annotations

import pytest

from relay.engine.speech import STT_ENGINES, TTS_ENGINES, voices
from relay.engine.speech.voices import SpeechUnavailable, choose


def test_every_listed_voice_and_recognizer_is_an_engine_of_the_registry():
    assert {v.engine for v in voices.voices()} <= set(TTS_ENGINES)
    assert {r.engine for r in voices.recognizers()} <= set(STT_ENGINES)
    ids = [v.id for v in voices.voices()]
    assert len(ids) == len(set(ids))
    # This machine installs the project's own packages and espeak-ng: all of them are listed.
    assert {"joe", "espeak-en-us", "espeak-es", "espeak-fr-fr"} <= set(ids)
    assert {"whisper", "whisper-multilingual", "pocketsphinx"} <= {
        r.engine for r in voices.recognizers()
    }


def test_languages_need_both_a_recognizer_and_a_voice():
    langs = voices.languages()
    assert {"en-US", "es-ES", "fr-FR", "de-DE"} <= set(langs)
    assert not [lang for lang in langs if lang.startswith(("ja", "zh"))]


def test_english_defaults_to_the_fast_recognizer_and_the_deployment_voice():
    choice = choose(voice=None, language="en-US", stt=None, tts=None)
    assert (choice.stt, choice.tts, choice.voice.id) == ("whisper", "piper", "joe")
    espeak = choose(voice=None, language="en-GB", stt=None, tts=None, default_tts="espeak")
    assert (espeak.tts, espeak.voice.id) == ("espeak", "espeak-en-gb")


def test_another_language_gets_the_multilingual_recognizer_and_a_voice_of_it():
    choice = choose(voice=None, language="es", stt=None, tts=None)
    assert (choice.stt, choice.stt_language, choice.voice.language) == (
        "whisper-multilingual",
        "es",
        "es-ES",
    )
    latin = choose(voice=None, language="es-419", stt=None, tts=None)
    assert latin.voice.id == "espeak-es-419"


@pytest.mark.parametrize(
    ("settings", "code", "field"),
    [
        ({"voice": "alloy", "language": "en-US"}, "voice_unavailable", "voice"),
        ({"voice": "espeak-fr-fr", "language": "es"}, "voice_language_mismatch", "voice"),
        ({"voice": "joe", "language": "en-US", "tts": "espeak"}, "voice_engine_mismatch", "tts"),
        ({"language": "ja-JP"}, "language_unavailable", "language"),
        ({"language": "es", "stt": "whisper"}, "language_unavailable", "stt"),
        ({"language": "fr", "stt": "pocketsphinx"}, "language_unavailable", "stt"),
        ({"language": "es", "tts": "piper"}, "language_unavailable", "tts"),
    ],
)
def test_what_cannot_be_done_is_refused_with_the_choices(settings, code, field):
    given = {"voice": None, "stt": None, "tts": None, **settings}
    with pytest.raises(SpeechUnavailable) as refused:
        choose(**given)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert refused.value.choices  # the error says what would work
