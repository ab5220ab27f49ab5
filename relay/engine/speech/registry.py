"""The local speech engines by the names settings and agents use (``stt``, ``tts``).

A new engine is a module of its own (a :class:`LocalSTT` or :class:`LocalTTS` subclass) and
one line here. Its name is also a ``Literal`` choice of ``Settings.stt`` / ``.tts``
(:mod:`relay.config`, below the engine, cannot import it) and of the agent API's ``stt`` /
``tts``; ``tests/engine/speech/test_registry.py`` holds the settings to this list.
"""

from __future__ import annotations

from relay.engine.speech import voices
from relay.engine.speech.espeak import EspeakTTS
from relay.engine.speech.local import LocalSTT, LocalTTS
from relay.engine.speech.piper import PiperTTS
from relay.engine.speech.silero import vad
from relay.engine.speech.sphinx import PocketsphinxSTT
from relay.engine.speech.whisper import WhisperMultilingualSTT, WhisperSTT

STT_ENGINES: dict[str, type[LocalSTT]] = {
    "whisper": WhisperSTT,
    "whisper-multilingual": WhisperMultilingualSTT,
    "pocketsphinx": PocketsphinxSTT,
}
TTS_ENGINES: dict[str, type[LocalTTS]] = {
    "piper": PiperTTS,
    "espeak": EspeakTTS,
}


def local_stt(name: str) -> LocalSTT:
    """A new recognizer of the engine ``name``; ValueError for an unknown name."""
    engine = STT_ENGINES.get(name)
    if engine is None:
        raise ValueError(f"unknown stt {name!r}")
    return engine()


def local_tts(name: str, *, sample_rate: int) -> LocalTTS:
    """A new synthesizer of the engine ``name`` speaking at ``sample_rate``; ValueError for
    an unknown name."""
    engine = TTS_ENGINES.get(name)
    if engine is None:
        raise ValueError(f"unknown tts {name!r}")
    return engine(sample_rate=sample_rate)


def call_speech(
    *,
    voice: str | None,
    language: str,
    stt: str | None,
    tts: str | None,
    default_stt: str,
    default_tts: str,
    sample_rate: int,
) -> tuple[LocalSTT, LocalTTS, str | None]:
    """The recognizer and synthesizer of one call, and why its agent's settings were not
    followed, if they were not: an agent stored before voices were checked (or one whose
    voice was uninstalled since) gets the relay's defaults instead of a failed call."""
    problem = None
    try:
        choice = voices.choose(
            voice=voice,
            language=language,
            stt=stt,
            tts=tts,
            default_stt=default_stt,
            default_tts=default_tts,
        )
    except voices.SpeechUnavailable as exc:
        problem = f"{exc} The call uses the relay's default voice and recognizer."
        choice = voices.choose(
            voice=None,
            language="en-US",
            stt=None,
            tts=None,
            default_stt=default_stt,
            default_tts=default_tts,
        )
    recognizer = local_stt(choice.stt)
    if isinstance(recognizer, WhisperSTT):
        recognizer.language = choice.stt_language
    synthesizer = local_tts(choice.tts, sample_rate=sample_rate)
    if isinstance(synthesizer, EspeakTTS):
        synthesizer.voice = choice.voice.engine_voice
    return recognizer, synthesizer, problem


def warm(*, stt: str = "whisper", tts: str = "piper", vad_silence_s: float = 0.15) -> None:
    """Blocking: load the models a call will use and run each once (first runs are slow)."""
    vad(min_silence_s=vad_silence_s)
    if stt in STT_ENGINES:
        STT_ENGINES[stt].warm()
    if tts in TTS_ENGINES:
        TTS_ENGINES[tts].warm()
