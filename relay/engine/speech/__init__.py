"""The local speech engines, one module each, behind livekit's ``stt.STT`` / ``tts.TTS`` seams.

* recognizers: :mod:`.whisper` (faster-whisper tiny.en, the default, and base for other
  languages, joined by :mod:`.whisper_base`), :mod:`.sphinx` (pocketsphinx);
* synthesizers: :mod:`.piper` (Piper, the default), :mod:`.espeak` (espeak-ng);
* :mod:`.silero`: the call's voice activity detection, Silero run on the event loop;
* :mod:`.early`: :class:`EarlySTT`, the call's streaming STT over a recognizer, which decides
  when the caller's turn ends;
* :mod:`.local`: the two seams an engine fills (:class:`LocalSTT`, :class:`LocalTTS`);
* :mod:`.pool`: what engines share in a process (inference threads, loaded models, the
  phrase cache) and :func:`configure`;
* :mod:`.registry`: the engines by name (:func:`local_stt`, :func:`local_tts`), a call's
  (:func:`call_speech`) and :func:`warm`;
* :mod:`.voices`: what this relay can speak and hear (voices, recognizers, languages).

A new local engine is a new module and one line in :mod:`.registry`. Any other livekit
plugin (Deepgram, ElevenLabs...) fits the same livekit seams.
"""

from relay.engine.speech.early import EarlySTT, Floor, UtteranceTiming, acoustic_end, speech_floor
from relay.engine.speech.espeak import EspeakTTS, espeak_binary, espeak_wav_to_pcm
from relay.engine.speech.local import LocalSTT, LocalTTS
from relay.engine.speech.piper import PiperTTS, piper_rate, piper_sentences
from relay.engine.speech.pool import (
    INFERENCE_NICENESS,
    DeadlineExecutor,
    PhraseCache,
    configure,
    inference_pool,
    phrases,
    run_inference,
    run_synthesis,
)
from relay.engine.speech.registry import (
    STT_ENGINES,
    TTS_ENGINES,
    call_speech,
    local_stt,
    local_tts,
    warm,
)
from relay.engine.speech.silero import CallVAD, InlineSileroVAD, vad
from relay.engine.speech.sphinx import PocketsphinxSTT, pocketsphinx_transcribe
from relay.engine.speech.whisper import WhisperSTT, whisper_transcribe, whisper_transcribe_standard

__all__ = [
    "Floor",
    "INFERENCE_NICENESS",
    "STT_ENGINES",
    "TTS_ENGINES",
    "CallVAD",
    "DeadlineExecutor",
    "EarlySTT",
    "EspeakTTS",
    "InlineSileroVAD",
    "LocalSTT",
    "LocalTTS",
    "PhraseCache",
    "PiperTTS",
    "PocketsphinxSTT",
    "UtteranceTiming",
    "WhisperSTT",
    "acoustic_end",
    "call_speech",
    "configure",
    "espeak_binary",
    "espeak_wav_to_pcm",
    "inference_pool",
    "local_stt",
    "local_tts",
    "phrases",
    "piper_rate",
    "piper_sentences",
    "pocketsphinx_transcribe",
    "run_inference",
    "run_synthesis",
    "speech_floor",
    "vad",
    "warm",
    "whisper_transcribe",
    "whisper_transcribe_standard",
]
