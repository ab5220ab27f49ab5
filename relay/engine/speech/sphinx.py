"""pocketsphinx STT (``pocketsphinx``): the model ships inside the wheel.

The small, fast fallback recognizer (partials, CI); less accurate than Whisper on phone
audio.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from relay.engine.codecs import PCM
from relay.engine.speech.local import LocalSTT
from relay.engine.speech.pool import inference_pool
from relay.logs import get_logger

log = get_logger("relay.engine.speech")

POCKETSPHINX_RATE = 16000

_sphinx = threading.local()


class PocketsphinxSTT(LocalSTT):
    name = "pocketsphinx-en-us"
    rate = POCKETSPHINX_RATE

    @staticmethod
    def warm() -> None:
        # In a pool thread: each inference thread has a decoder of its own.
        silence = np.zeros(POCKETSPHINX_RATE // 2, dtype=np.int16)
        inference_pool().submit(pocketsphinx_transcribe, silence).result()

    def _transcribe(self, pcm: PCM, stop: threading.Event) -> tuple[str, float]:
        return pocketsphinx_transcribe(pcm)


def _pocketsphinx_decoder() -> Any:
    """One decoder per inference thread: a decoder holds per-utterance state."""
    decoder = getattr(_sphinx, "decoder", None)
    if decoder is None:
        # Imported here: only a process that recognizes with pocketsphinx loads it.
        from pocketsphinx import Decoder

        started = time.perf_counter()
        decoder = Decoder(samprate=POCKETSPHINX_RATE, loglevel="FATAL")
        _sphinx.decoder = decoder
        log.info(
            "model_loaded", model="pocketsphinx", seconds=round(time.perf_counter() - started, 3)
        )
    return decoder


def pocketsphinx_transcribe(pcm16k: PCM) -> tuple[str, float]:
    """Blocking. 16 kHz int16 mono -> (text, confidence)."""
    decoder = _pocketsphinx_decoder()
    decoder.start_utt()
    decoder.process_raw(pcm16k.tobytes(), no_search=False, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    if hyp is None:
        return "", 0.0
    return str(hyp.hypstr), round(float(hyp.prob and np.exp(min(0, hyp.prob / 1000))), 3)
