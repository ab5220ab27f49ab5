"""Speech engines behind livekit's ``stt.STT`` / ``tts.TTS`` seams, and early STT.

* :class:`WhisperSTT`, :class:`PocketsphinxSTT`: whole-utterance recognizers (non-streaming).
* :class:`EarlySTT`: wraps one of them into a streaming STT that owns endpointing. It starts
  recognizing at the first silence (``early_silence`` after speech, from the VAD) and declares
  the turn over ``endpointing_delay`` after the end of speech, by which time the transcript is
  usually ready. If the caller speaks again in between, the early result is thrown away and
  the whole utterance is recognized again at the next silence. The end of speech is where
  the voice died away, not where Silero let go of it (100-200 ms later).
* :class:`PiperTTS`, :class:`EspeakTTS`: sentence synthesizers at the caller line's rate.

Any other livekit plugin (Deepgram, ElevenLabs...) fits the same seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, stt, tts, utils, vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from relay.engine import models
from relay.engine.codecs import PCM, resample
from relay.engine.vad import CallVAD

MAX_UTTERANCE_S = 28.0  # Whisper sees 30 s at most
PREFIX_S = 0.4  # audio kept from before the VAD noticed speech
# Silero keeps saying "speech" for 100-200 ms after a voice has died away, which would add
# as much to every turn. The end of speech is taken back to the last 20 ms louder than
# SPEECH_FLOOR_DB below the utterance's loud level, at most END_LOOKBACK_S earlier than the
# VAD's estimate. Over noise nothing is that quiet, and the VAD's estimate stands.
SPEECH_FLOOR_DB = 30.0
END_LOOKBACK_S = 0.3
RESUME_GRACE_FRAMES = 8  # 20 ms each
RESUME_WINDOW_FRAMES = 3  # the caller's last frames checked for speech starting again
EN = LanguageCode("en")


def frame_pcm(frame: rtc.AudioFrame) -> PCM:
    pcm: PCM = np.frombuffer(frame.data, dtype=np.int16)
    return pcm


def pcm_frame(pcm: PCM, sample_rate: int) -> rtc.AudioFrame:
    data = np.ascontiguousarray(pcm, dtype=np.int16)
    return rtc.AudioFrame(
        data=data.tobytes(), sample_rate=sample_rate, num_channels=1, samples_per_channel=len(data)
    )


# ----------------------------------------------------------------------------------- STT


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
            return await models.run_inference(
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


class WhisperSTT(LocalSTT):
    name = "faster-whisper-tiny.en"
    rate = models.WHISPER_RATE

    def _transcribe(self, pcm: PCM, stop: threading.Event) -> tuple[str, float]:
        return models.whisper_transcribe(pcm, stop)


class PocketsphinxSTT(LocalSTT):
    name = "pocketsphinx-en-us"
    rate = models.POCKETSPHINX_RATE

    def _transcribe(self, pcm: PCM, stop: threading.Event) -> tuple[str, float]:
        return models.pocketsphinx_transcribe(pcm)


def local_stt(name: str) -> LocalSTT:
    if name == "pocketsphinx":
        return PocketsphinxSTT()
    if name == "whisper":
        return WhisperSTT()
    raise ValueError(f"unknown stt {name!r}")


@dataclass(slots=True)
class UtteranceTiming:
    """One caller utterance as the engine saw it (``time.perf_counter()`` seconds)."""

    speech_started_at: float = 0.0
    speech_ended_at: float = 0.0  # the VAD's estimate of the last voiced audio
    stt_started_at: float = 0.0
    stt_done_at: float = 0.0
    endpoint_at: float = 0.0  # speech end + endpointing delay, when silence held that long
    committed_at: float = 0.0  # the transcript handed to the session
    discarded: int = 0  # early results thrown away because the caller spoke again
    text: str = ""
    confidence: float = 0.0
    audio_s: float = 0.0

    @property
    def stt_ms(self) -> float:
        return (self.stt_done_at - self.stt_started_at) * 1000

    @property
    def endpointing_ms(self) -> float:
        return (self.endpoint_at - self.speech_ended_at) * 1000

    @property
    def saved_ms(self) -> float:
        """How much sooner the transcript was ready than if STT had started at the endpoint."""
        overlap = self.endpoint_at - self.stt_started_at
        return max(0.0, min(self.stt_done_at - self.stt_started_at, overlap)) * 1000


def _levels(audio: PCM, rate: int) -> npt.NDArray[np.float64]:
    """RMS of each 20 ms window of ``audio``, aligned to its end."""
    window = max(1, rate // 50)
    count = len(audio) // window
    frames = audio[len(audio) - count * window :].reshape(count, window).astype(np.float64)
    levels: npt.NDArray[np.float64] = np.sqrt(np.mean(frames**2, axis=1))
    return levels


def speech_floor(audio: PCM, rate: int) -> float:
    """The level ``SPEECH_FLOOR_DB`` below the loud part of an utterance."""
    levels = _levels(audio, rate)
    return float(np.percentile(levels, 90)) * 10 ** (-SPEECH_FLOOR_DB / 20) if len(levels) else 0.0


def acoustic_end(
    audio: PCM, rate: int, floor: float, *, vad_end: float, audio_end: float
) -> tuple[float, bool]:
    """When the speech in ``audio`` (whose last sample arrived at ``audio_end``) died away,
    and whether the sound has been under ``floor`` since: the VAD's estimate ``vad_end``,
    or up to ``END_LOOKBACK_S`` earlier where the sound fell under ``floor``."""
    levels = _levels(audio, rate)
    loud = np.flatnonzero(levels > floor)
    if not len(loud):
        return vad_end, False
    energy_end = audio_end - (len(levels) - 1 - int(loud[-1])) / 50
    if energy_end >= vad_end:
        return vad_end, False
    return max(vad_end - END_LOOKBACK_S, energy_end), True


class EarlySTT(stt.STT[Any]):
    """Streaming STT over a whole-utterance recognizer, with early start and endpointing.

    Use it with ``turn_detection="stt"``: this stream decides when the caller's turn ends.
    ``on_utterance`` receives each utterance's timing when its transcript is handed on.
    """

    def __init__(
        self,
        recognizer: LocalSTT,
        *,
        vad: vad.VAD,
        endpointing_delay: float,
        on_utterance: Callable[[UtteranceTiming], None] | None = None,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self.recognizer = recognizer
        self._vad = vad
        self.endpointing_delay = endpointing_delay
        self.on_utterance = on_utterance

    @property
    def model(self) -> str:
        return self.recognizer.model

    @property
    def provider(self) -> str:
        return "relay"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return await self.recognizer.recognize(buffer=buffer, language=language)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _EarlyStream(self, conn_options=conn_options)


@dataclass
class _Utterance:
    rate: int = 0
    floor: float | None = None  # quiet after the speech is under this (None: noisy line)
    frames: list[PCM] = field(default_factory=list)
    timing: UtteranceTiming = field(default_factory=UtteranceTiming)
    recognition: asyncio.Task[tuple[str, float]] | None = None
    endpoint: asyncio.Task[None] | None = None

    def audio(self) -> PCM:
        pcm = np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)
        limit = int(MAX_UTTERANCE_S * self.rate)
        return pcm[-limit:] if len(pcm) > limit else pcm


class _EarlyStream(stt.RecognizeStream):
    def __init__(self, owner: EarlySTT, *, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=owner, conn_options=conn_options)
        self._owner = owner
        self._ring: deque[PCM] = deque()
        self._ring_samples = 0
        self._rate = 0
        self._current: _Utterance | None = None
        self._last_frame_at = 0.0

    async def _run(self) -> None:
        owner_vad = self._owner._vad
        # A call's VAD is heard by the session too: this stream feeds it (relay.engine.vad).
        vad_stream = owner_vad.source() if isinstance(owner_vad, CallVAD) else owner_vad.stream()

        async def forward() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    vad_stream.flush()
                    continue
                self._keep(item)
                vad_stream.push_frame(item)
            vad_stream.end_input()

        async def listen() -> None:
            async for ev in vad_stream:
                if ev.type == vad.VADEventType.START_OF_SPEECH:
                    self._speech_started(ev)
                elif ev.type == vad.VADEventType.END_OF_SPEECH:
                    self._speech_paused(ev)

        tasks = [asyncio.create_task(forward()), asyncio.create_task(listen())]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            if self._current is not None:
                self._drop_pending(self._current)
            await vad_stream.aclose()

    def _keep(self, frame: rtc.AudioFrame) -> None:
        pcm = frame_pcm(frame)
        self._rate = frame.sample_rate
        self._last_frame_at = time.perf_counter()
        if self._current is not None:
            self._current.frames.append(pcm)
            return
        self._ring.append(pcm)
        self._ring_samples += len(pcm)
        while self._ring and self._ring_samples - len(self._ring[0]) > PREFIX_S * self._rate:
            self._ring_samples -= len(self._ring.popleft())

    def _speech_started(self, ev: vad.VADEvent) -> None:
        now = time.perf_counter()
        utt = self._current
        if utt is None:
            utt = _Utterance(rate=self._rate)
            # The VAD fires after some speech; take that speech plus a little before it.
            keep = int((ev.speech_duration + ev.inference_duration + PREFIX_S) * self._rate)
            ring = np.concatenate(list(self._ring)) if self._ring else np.zeros(0, np.int16)
            utt.frames.append(ring[-keep:])
            self._ring.clear()
            self._ring_samples = 0
            utt.timing.speech_started_at = now - ev.speech_duration - ev.inference_duration
            self._current = utt
            self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
            return
        if utt.endpoint is not None or utt.recognition is not None:
            utt.timing.discarded += 1
            self._drop_pending(utt)

    def _drop_pending(self, utt: _Utterance) -> None:
        # The thread running a discarded recognition cannot be stopped; its result is ignored.
        for task in (utt.endpoint, utt.recognition):
            if task is not None and not task.done():
                task.cancel()
        utt.endpoint = None
        utt.recognition = None

    def _speech_paused(self, ev: vad.VADEvent) -> None:
        utt = self._current
        if utt is None:
            return
        now = time.perf_counter()
        timing = utt.timing
        audio = utt.audio()
        floor = speech_floor(audio, utt.rate)
        timing.speech_ended_at, quiet = acoustic_end(
            audio,
            utt.rate,
            floor,
            vad_end=now - ev.silence_duration - ev.inference_duration,
            audio_end=self._last_frame_at,
        )
        utt.floor = floor if quiet else None
        timing.stt_started_at = now
        timing.audio_s = len(audio) / max(utt.rate, 1)
        # Needed when the endpoint would confirm the turn: recognitions of other calls'
        # turns that end sooner go first.
        due = time.monotonic() + timing.speech_ended_at + self._owner.endpointing_delay - now
        utt.recognition = asyncio.create_task(
            self._owner.recognizer.transcribe(audio, utt.rate, deadline=due)
        )
        utt.endpoint = asyncio.create_task(self._endpoint(utt))

    def _resuming(self, utt: _Utterance) -> bool:
        if utt.floor is None or not utt.frames:
            return False
        recent = np.concatenate(utt.frames[-RESUME_WINDOW_FRAMES:])
        return bool(np.any(_levels(recent, utt.rate) > utt.floor))

    async def _endpoint(self, utt: _Utterance) -> None:
        timing = utt.timing
        wait = timing.speech_ended_at + self._owner.endpointing_delay - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        # The VAD confirms that speech has started again ~0.1 s after it has: if the line
        # is loud again, give it that long to say so (and cancel this endpoint).
        for _ in range(RESUME_GRACE_FRAMES):
            if not self._resuming(utt):
                break
            await asyncio.sleep(0.02)
        timing.endpoint_at = time.perf_counter()
        assert utt.recognition is not None
        try:
            text, confidence = await utt.recognition
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken recognizer must not end the call: treat as silence
            text, confidence = "", 0.0
        timing.stt_done_at = max(timing.stt_done_at, time.perf_counter())
        if self._current is not utt:
            return
        self._current = None
        timing.text, timing.confidence = text.strip(), confidence
        timing.committed_at = time.perf_counter()
        end_wall = time.time() - (timing.committed_at - timing.speech_ended_at)
        if timing.text:
            self._event_ch.send_nowait(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    alternatives=[
                        stt.SpeechData(language=EN, text=timing.text, confidence=confidence)
                    ],
                    speech_end_time=end_wall,
                )
            )
        self._event_ch.send_nowait(
            stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, speech_end_time=end_wall)
        )
        if self._owner.on_utterance is not None:
            self._owner.on_utterance(timing)


# ----------------------------------------------------------------------------------- TTS


TTS_FRAME_MS = 500  # synthesized audio handed to the session in frames this long


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
        # per-frame work (a copy, two frames, a timer), which in 20 ms frames was a few ms
        # of stopped loop per sentence, felt by the other calls' turns.
        output_emitter.initialize(
            request_id=uuid.uuid4().hex[:12],
            sample_rate=owner.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=TTS_FRAME_MS,
        )
        key = (owner.voice_key, owner.sample_rate, self._input_text)
        pcm = models.phrases.get(key)
        if pcm is None:
            pcm = models.phrases.put(
                key, await owner.render(self._input_text, deadline=self._deadline)
            )
        if len(pcm):
            output_emitter.push(pcm.tobytes())
        output_emitter.flush()


class PiperTTS(LocalTTS):
    name = "piper-en_US-joe-medium"

    async def render(self, text: str, *, deadline: float | None = None) -> PCM:
        sentences = await models.run_synthesis(models.piper_sentences, text, deadline=deadline)
        if not sentences:
            return np.zeros(0, np.int16)
        gap = np.zeros(int(models.piper_rate() * 0.12), np.int16)
        parts = [part for pcm in sentences for part in (gap, pcm)][1:]
        return resample(np.concatenate(parts), models.piper_rate(), self.sample_rate)


class EspeakTTS(LocalTTS):
    name = "espeak-ng"

    def __init__(self, *, sample_rate: int, voice: str = "en-us", words_per_minute: int = 165):
        super().__init__(sample_rate=sample_rate)
        self.voice = voice
        self.words_per_minute = words_per_minute

    @property
    def voice_key(self) -> str:
        return f"{self.name}:{self.voice}:{self.words_per_minute}"

    async def render(self, text: str, *, deadline: float | None = None) -> PCM:
        proc = await asyncio.create_subprocess_exec(
            models.espeak_binary(),
            "--stdout",
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            wav, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        pcm, rate = models.espeak_wav_to_pcm(wav)
        return resample(pcm, rate, self.sample_rate)


def local_tts(name: str, *, sample_rate: int) -> LocalTTS:
    if name == "espeak":
        return EspeakTTS(sample_rate=sample_rate)
    if name == "piper":
        return PiperTTS(sample_rate=sample_rate)
    raise ValueError(f"unknown tts {name!r}")
