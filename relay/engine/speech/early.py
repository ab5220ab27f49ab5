"""Early STT: a call's streaming STT over a whole-utterance recognizer, owning endpointing.

:class:`EarlySTT` starts recognizing at the first silence (``early_silence`` after speech,
from the VAD) and declares the turn over ``endpointing_delay`` after the end of speech, by
which time the transcript is usually ready. If the caller speaks again in between, the early
result is thrown away and the whole utterance is recognized again at the next silence. The
end of speech is where the voice died away, not where Silero let go of it (100-200 ms
later). :class:`UtteranceTiming` is how each utterance went, for the turn's metrics.

Two judgements of an utterance are the call's, passed in: a :class:`Floor` screens speech
that starts over the agent's reply (a backchannel is no turn at all), and ``unfinished``
says a transcript stops mid-sentence, so its endpoint waits ``unfinished_hold`` longer.
With ``speculate``, a transcript ready before its endpoint (and not unfinished) is handed
over at once, so the brain can start on it (:mod:`relay.engine.speculation`); ``withdraw``
says the caller spoke again before the endpoint, and it is not the turn after all.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, stt, utils, vad
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from relay.engine.codecs import PCM
from relay.engine.speech.local import EN, LocalSTT, frame_pcm
from relay.engine.speech.silero import CallVAD, VADSource

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
# The agent stays paused on screened speech at most this long after it ends: a recognizer
# this slow is taken to mean the speech was more than an acknowledgement.
SCREEN_TIMEOUT_S = 2.0


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


class Floor(Protocol):
    """The agent's side of caller speech that overlaps its reply (:mod:`relay.engine.backchannel`).

    Speech that starts while :meth:`contested` is screened: :meth:`pause` at once, the
    session hears nothing of it until it is known to be a real interruption (:meth:`cut`,
    then the utterance goes on as a turn), or an acknowledgement (:meth:`resume`, and it is
    no turn at all)."""

    max_speech_s: float  # voiced speech past this is an interruption whatever its words

    def contested(self) -> bool: ...

    def acknowledges(self, text: str) -> bool: ...

    def pause(self) -> None: ...

    def resume(self, text: str, timing: UtteranceTiming) -> None: ...

    def cut(self, why: str) -> None:
        """``why``: the words that were not an acknowledgement, or what else decided it."""


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
        floor: Floor | None = None,
        unfinished: Callable[[str], bool] | None = None,
        unfinished_hold: float = 0.0,
        speculate: Callable[[str, float], None] | None = None,
        withdraw: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self.recognizer = recognizer
        self._vad = vad
        self.endpointing_delay = endpointing_delay
        self.on_utterance = on_utterance
        self.floor = floor
        # A transcript ``unfinished`` says the caller will go on waits this much longer.
        self.unfinished = unfinished
        self.unfinished_hold = unfinished_hold
        self.speculate = speculate
        self.withdraw = withdraw

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
    # Screened (it began over the agent's speech): its events wait in ``held`` until it is
    # known to interrupt; ``voiced_s`` is its speech before the current VAD segment.
    screened: bool = False
    held: list[stt.SpeechEvent] = field(default_factory=list)
    voiced_s: float = 0.0
    speculated: bool = False  # its early transcript was handed to ``speculate``

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
        self._source: VADSource | None = None

    async def _run(self) -> None:
        owner_vad = self._owner._vad
        # A call's VAD is heard by the session too: this stream feeds it (see CallVAD).
        vad_stream: Any
        if isinstance(owner_vad, CallVAD):
            vad_stream = self._source = owner_vad.source()
        else:
            vad_stream = owner_vad.stream()

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
                elif ev.type == vad.VADEventType.INFERENCE_DONE:
                    self._speech_going_on(ev)
                if self._source is not None:
                    self._source.publish(ev)

        tasks = [asyncio.create_task(forward()), asyncio.create_task(listen())]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            if self._current is not None:
                self._drop_pending(self._current)
                self._withdraw(self._current)
                if self._current.screened and self._owner.floor is not None:
                    self._owner.floor.resume("", self._current.timing)
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
            floor = self._owner.floor
            if floor is not None and self._source is not None and floor.contested():
                utt.screened = True
                floor.pause()
                self._source.hold()
            self._send(utt, stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
            return
        if utt.endpoint is not None or utt.recognition is not None:
            utt.timing.discarded += 1
            self._drop_pending(utt)
            self._withdraw(utt)

    def _send(self, utt: _Utterance, event: stt.SpeechEvent) -> None:
        if utt.screened:
            utt.held.append(event)
        else:
            self._event_ch.send_nowait(event)

    def _speech_going_on(self, ev: vad.VADEvent) -> None:
        utt = self._current
        floor = self._owner.floor
        if utt is None or not utt.screened or floor is None or not ev.speaking:
            return
        if utt.voiced_s + ev.speech_duration > floor.max_speech_s:
            self._concede(utt, "longer than an acknowledgement")

    def _concede(self, utt: _Utterance, why: str) -> None:
        """A real interruption: the agent stops, and the session hears the utterance."""
        assert self._owner.floor is not None and self._source is not None
        utt.screened = False
        self._owner.floor.cut(why)
        self._source.release()
        held, utt.held = utt.held, []
        for event in held:
            self._event_ch.send_nowait(event)

    async def _screen(self, utt: _Utterance) -> None:
        """The screened utterance paused: an acknowledgement (or nothing legible) lets the
        agent go on and is no turn; anything else cuts the agent and is the next turn."""
        floor = self._owner.floor
        assert floor is not None and self._source is not None and utt.recognition is not None
        text: str | None
        try:
            async with asyncio.timeout(SCREEN_TIMEOUT_S):
                text, _ = await asyncio.shield(utt.recognition)
        except TimeoutError:
            text = None
        except asyncio.CancelledError:
            raise
        except Exception:
            text = ""
        if self._current is not utt:
            return
        if text is not None and (not text.strip() or floor.acknowledges(text)):
            text = text.strip()
            self._current = None
            self._source.drop()
            utt.timing.text = text
            utt.timing.stt_done_at = time.perf_counter()
            floor.resume(text, utt.timing)
            return
        self._concede(utt, "no verdict in time" if text is None else text)
        await self._endpoint(utt)

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
        if utt.screened:  # the agent is paused on it: needed at once
            due = time.monotonic()
            utt.voiced_s += ev.speech_duration
        utt.recognition = asyncio.create_task(
            self._owner.recognizer.transcribe(audio, utt.rate, deadline=due)
        )
        if not utt.screened and self._owner.speculate is not None:
            utt.recognition.add_done_callback(functools.partial(self._recognized, utt))
        utt.endpoint = asyncio.create_task(
            self._screen(utt) if utt.screened else self._endpoint(utt)
        )

    def _recognized(self, utt: _Utterance, task: asyncio.Task[tuple[str, float]]) -> None:
        """The transcript is ready: if the endpoint is still to come, the brain may start."""
        owner = self._owner
        if task.cancelled() or task.exception() is not None or owner.speculate is None:
            return
        if self._current is not utt or utt.screened or utt.timing.endpoint_at:
            return  # gone, screened, or the endpoint is already here: nothing to win
        text, confidence = task.result()
        text = text.strip()
        if not text or (owner.unfinished_hold and owner.unfinished and owner.unfinished(text)):
            return  # the caller is likely to go on
        utt.speculated = True
        owner.speculate(text, confidence)

    def _withdraw(self, utt: _Utterance) -> None:
        if utt.speculated and self._owner.withdraw is not None:
            utt.speculated = False
            self._owner.withdraw()

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
        owner = self._owner
        if owner.unfinished_hold and owner.unfinished is not None and owner.unfinished(text):
            # Speech starting again cancels this task (see _speech_started).
            hold = timing.speech_ended_at + owner.endpointing_delay + owner.unfinished_hold
            await asyncio.sleep(max(0.0, hold - time.perf_counter()))
        if self._current is not utt:
            return
        self._current = None
        timing.text, timing.confidence = text.strip(), confidence
        timing.committed_at = time.perf_counter()
        end_wall = time.time() - (timing.committed_at - timing.speech_ended_at)
        if timing.text:
            self._send(
                utt,
                stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    alternatives=[
                        stt.SpeechData(language=EN, text=timing.text, confidence=confidence)
                    ],
                    speech_end_time=end_wall,
                ),
            )
        self._send(
            utt, stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH, speech_end_time=end_wall)
        )
        if self._owner.on_utterance is not None:
            self._owner.on_utterance(timing)
