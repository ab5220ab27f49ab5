"""Backchannels: the "mhm", "okay" and "I see" a caller says while the agent talks, which
tell the agent to go on, not to stop and answer.

While the agent's interruptible speech plays, caller speech is screened
(:class:`relay.engine.speech.EarlySTT` with a :class:`Floor`): the agent pauses at the first
voiced frame (so a real interruption is heard at once), and resumes where it paused when the
speech turns out to be short and made only of acknowledgements (or of nothing the recognizer
could read: a cough). Anything else cuts the reply and becomes the next turn, as before.

``interruptionSensitivity`` picks how long an acknowledgement may run: ``high`` screens
nothing (any speech cuts, the relay's behaviour before screening), ``medium`` (default) and
``low`` allow :data:`MAX_BACKCHANNEL_S` seconds of speech. The words are per language
(:data:`DEFAULT_WORDS`), replaced by an agent's ``backchannelWords``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from livekit.agents.voice.speech_handle import SpeechHandle

from relay.engine.audio_io import CallAudioOutput
from relay.engine.speech import UtteranceTiming

Sensitivity = Literal["low", "medium", "high"]

# Voiced speech past this is an interruption whatever its words; "uh-huh, yeah, sure" fits
# in ~1 s, a sentence rarely does.
MAX_BACKCHANNEL_S: dict[Sensitivity, float] = {"low": 1.6, "medium": 1.0, "high": 0.0}

# Whisper and pocketsphinx spell the same sounds several ways; every spelling is listed.
DEFAULT_WORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "mhm",
        "mm-hmm",
        "mm hmm",
        "mmhmm",
        "mm",
        "hmm",
        "mmm",
        "uh-huh",
        "uh huh",
        "uhuh",
        "uh",
        "um",
        "ah",
        "oh",
        "okay",
        "ok",
        "o.k",
        "k",
        "yeah",
        "yes",
        "yep",
        "yup",
        "ya",
        "right",
        "alright",
        "all right",
        "i see",
        "sure",
        "got it",
        "gotcha",
        "cool",
        "nice",
        "great",
        "good",
        "fine",
        "true",
        "exactly",
        "indeed",
        "totally",
        "of course",
        "makes sense",
        "that makes sense",
        "i know",
        "i understand",
        "understood",
        "sounds good",
        "go on",
        "go ahead",
        "wow",
        "interesting",
    ),  # fmt: skip
    "es": ("sí", "si", "vale", "claro", "ajá", "aja", "ya", "bueno", "entiendo", "mhm", "ok"),
    "fr": ("oui", "ouais", "d'accord", "ok", "mhm", "je vois", "bien sûr", "voilà", "ah"),
    "de": ("ja", "genau", "okay", "ok", "mhm", "aha", "stimmt", "klar", "richtig", "gut"),
}

_SEPARATORS = re.compile(r"[\s,.!?;:…\"“”]+")
# A hum however the recognizer spells it: "mmmm", "hmmm", "mhmm", "uhhh".
_HUM = re.compile(r"^(?:h*m+h*m*|u+h+|a+h+|o+h+)$")


def _tokens(text: str) -> list[str]:
    return [t for t in _SEPARATORS.split(text.lower().replace("’", "'")) if t]


@dataclass(frozen=True, slots=True)
class Backchannels:
    """One agent's screening policy: which words acknowledge, and for how long."""

    phrases: frozenset[tuple[str, ...]]
    max_speech_s: float

    @classmethod
    def for_agent(
        cls,
        sensitivity: Sensitivity,
        language: str,
        words: dict[str, list[str]] | None,
    ) -> Backchannels:
        lang = language.lower().split("-")[0]
        chosen: Iterable[str] = (words or {}).get(lang) or DEFAULT_WORDS.get(lang, ())
        phrases = frozenset(tuple(_tokens(w)) for w in chosen if _tokens(w))
        return cls(phrases, MAX_BACKCHANNEL_S[sensitivity])

    @property
    def screening(self) -> bool:
        return self.max_speech_s > 0 and bool(self.phrases)

    def matches(self, text: str) -> bool:
        """Is ``text`` made only of acknowledgements ("Yeah, yeah. Okay." is)?"""
        tokens = _tokens(text)
        if not tokens:
            return False
        longest = max(len(p) for p in self.phrases)
        i = 0
        while i < len(tokens):
            for size in range(min(longest, len(tokens) - i), 0, -1):
                if tuple(tokens[i : i + size]) in self.phrases:
                    i += size
                    break
            else:
                if not _HUM.match(tokens[i]):
                    return False
                i += 1
        return True


class CallFloor:
    """A call's :class:`relay.engine.speech.Floor`: pauses and resumes the call's output,
    cuts the playing speech (``cut`` says whether it could, and logs why), and reports each
    backchannel to ``heard``."""

    def __init__(
        self,
        policy: Backchannels,
        output: CallAudioOutput,
        *,
        playing: Callable[[], SpeechHandle | None],
        speaking: Callable[[], bool],
        cut: Callable[[str], bool],
        heard: Callable[[str, UtteranceTiming], None],
    ) -> None:
        self.policy = policy
        self.max_speech_s = policy.max_speech_s
        self._output = output
        self._playing = playing
        self._speaking = speaking
        self._cut = cut
        self._heard = heard

    def contested(self) -> bool:
        speech = self._playing()
        return (
            # "speaking" lasts from a reply's first audio to its end, including the gaps
            # where the next sentence is still being synthesized
            self.policy.screening
            and self._speaking()
            and not self._output.paused
            and speech is not None
            and speech.allow_interruptions
            and not speech.interrupted
        )

    def acknowledges(self, text: str) -> bool:
        return self.policy.matches(text)

    def pause(self) -> None:
        self._output.hold()

    def resume(self, text: str, timing: UtteranceTiming) -> None:
        self._output.release()
        if text:
            self._heard(text, timing)

    def cut(self, why: str) -> None:
        # An interrupted speech clears the output, which ends the pause without a frame
        # more; a speech that could not be cut plays on.
        if not self._cut(why):
            self._output.release()


__all__ = ["DEFAULT_WORDS", "MAX_BACKCHANNEL_S", "Backchannels", "CallFloor", "Sensitivity"]
