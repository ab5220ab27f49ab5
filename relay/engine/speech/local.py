"""The two seams a local speech engine fills, on livekit's ``stt.STT`` and ``tts.TTS``.

* :class:`LocalSTT`: a whole-utterance recognizer (non-streaming) run in the inference pool;
  :class:`~relay.engine.speech.early.EarlySTT` makes a call's streaming STT of one.
* :class:`LocalTTS`: a sentence synthesizer whose audio comes out at the caller line's rate,
  through the process's phrase cache.

An engine subclasses one of them in its own module and fills one method (``_transcribe`` or
``render``), plus ``warm`` when it has a model to load. Any other livekit plugin (Deepgram,
ElevenLabs...) fits the same livekit seams without them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from relay.engine.codecs import PCM, resample
from relay.engine.speech import pool

EN = LanguageCode("en")
TTS_FRAME_MS = 500  # synthesized audio handed to the session in frames this long


def frame_pcm(frame: rtc.AudioFrame) -> PCM:
    pcm: PCM = np.frombuffer(frame.data, dtype=np.int16)
    return pcm


class LocalSTT(stt.STT[Any]):
    """A whole-utterance recognizer running in the inference pool."""

    name = "local"
    rate = 16000

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    @property
    def model(self) -> str:
        return self.name

    @property
    def provider(self) -> str:
        return "relay"

    @staticmethod
    def warm() -> None:
        """Blocking: load the model and run it once (first runs are slow)."""

    def _transcribe(self, pcm: PCM, stop: threading.Event) -> tuple[str, float]:
        raise NotImplementedError

    async def transcribe(
        self, pcm: PCM, sample_rate: int, *, deadline: float | None = None
    ) -> tuple[str, float]:
        """Recognize 16-bit mono audio of any rate; returns (text, confidence). Cancelling
        it drops a run still queued, and tells a running one to skip its retries.
        ``deadline``: when the text is needed (``time.monotonic()``; None: now)."""
        stop = threading.Event()
        try:
            return await pool.run_inference(
                self._transcribe, resample(pcm, sample_rate, self.rate), stop, deadline=deadline
            )
        except asyncio.CancelledError:
            stop.set()
            raise

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = utils.merge_frames(buffer) if isinstance(buffer, list) else buffer
        text, confidence = await self.transcribe(frame_pcm(frame), frame.sample_rate)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex[:12],
            alternatives=[stt.SpeechData(language=EN, text=text, confidence=confidence)],
        )


class LocalTTS(tts.TTS[Any]):
    """A sentence synthesizer whose audio comes out at ``sample_rate`` (the line's rate)."""

    name = "local"

    def __init__(self, *, sample_rate: int) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )

    @property
    def model(self) -> str:
        return self.name

    @property
    def provider(self) -> str:
        return "relay"

    @property
    def voice_key(self) -> str:
        """What, besides the text and the rate, decides the audio (the phrase cache's key)."""
        return self.name

    @staticmethod
    def warm() -> None:
        """Blocking: load the model and run it once (first runs are slow)."""

    async def render(self, text: str, *, deadline: float | None = None) -> PCM:
        """``text`` as 16-bit mono PCM at ``sample_rate``; ``deadline``: when the audio is
        needed (``time.monotonic()``; None: now)."""
        raise NotImplementedError

    def synthesize(
        self,
        text: str,
        *,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        deadline: float | None = None,
    ) -> tts.ChunkedStream:
        """``deadline``: when the caller will need this audio (``time.monotonic()``), for a
        sentence that follows audio still playing; None: now."""
        return _LocalChunkedStream(
            tts=self, input_text=text, conn_options=conn_options, deadline=deadline
        )


class _LocalChunkedStream(tts.ChunkedStream):
    def __init__(
        self,
        *,
        tts: LocalTTS,
        input_text: str,
        conn_options: APIConnectOptions,
        deadline: float | None,
    ) -> None:
        self._deadline = deadline  # before the base class starts the synthesis task
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        owner = self._tts
        assert isinstance(owner, LocalTTS)
        # The whole sentence is synthesized at once, and the call's output cuts it into
        # 20 ms frames as it plays: frames of 500 ms here spare the event loop livekit's
        # per-frame work (a copy, two frames, a timer) for every 20 ms of a sentence.
        output_emitter.initialize(
            request_id=uuid.uuid4().hex[:12],
            sample_rate=owner.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=TTS_FRAME_MS,
        )
        key = (owner.voice_key, owner.sample_rate, self._input_text)
        pcm = pool.phrases.get(key)
        if pcm is None:
            pcm = pool.phrases.put(
                key, await owner.render(self._input_text, deadline=self._deadline)
            )
        if len(pcm):
            output_emitter.push(pcm.tobytes())
        output_emitter.flush()
