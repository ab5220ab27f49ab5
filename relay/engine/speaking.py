"""Speaking a reply: text to sentences to audio frames, marked so the session knows what the
caller heard and which words they may interrupt.

The session's ``tts_node`` is :meth:`Speaker.speak`. Each segment's first frame carries a
marker; when :class:`~relay.engine.audio_io.CallAudioOutput` sends that frame to the line it
calls :meth:`Speaker.on_marker`, which applies the reply's ``interruptible`` flag to the
playing speech and, on a turn's first frame, stores the turn's metrics. A ``play`` clip
(:mod:`relay.engine.playback`) is spoken in its place among the segments, as they are. The
first segment of a speculative turn's reply is synthesized ahead (:meth:`Speaker.prefetch`),
and spoken from there if the turn is confirmed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import tts
from livekit.agents.voice.speech_handle import SpeechHandle

from relay.engine.playback import PLAY_MARK, ClipError
from relay.engine.ports import FRAME_MS, PCM, CallSink
from relay.engine.speech import LocalTTS
from relay.engine.text import first_clause, segments, speakable, split_ready
from relay.engine.webhook import ReplyPlan, TurnRecord

# A later sentence of a reply is due this long before the audio ahead of it runs out.
SYNTHESIS_MARGIN_S = 0.5


def current_speech() -> SpeechHandle | None:
    """The speech a livekit pipeline task is producing (livekit keeps it in a contextvar)."""
    # livekit's private module, read only when a reply runs (it is loaded by then).
    from livekit.agents.voice.agent_activity import _SpeechHandleContextVar

    return _SpeechHandleContextVar.get(None)


class Speaker:
    def __init__(
        self,
        synthesizer: tts.TTS[Any],
        sink: CallSink,
        *,
        pause: float,
        playing: Callable[[], SpeechHandle | None],
        clip: Callable[[str, int], asyncio.Future[PCM]] | None = None,
    ) -> None:
        self.tts = synthesizer
        self.sink = sink
        self.pause = pause  # a fragment without a sentence end waits this long for more
        self.plans: dict[str, ReplyPlan] = {}  # by livekit speech id
        self._playing = playing
        self._clip = clip  # (URL, sample rate) -> the clip's audio, downloading
        # A speculative turn's first segment, synthesized while the turn is unconfirmed:
        # (turn id, its words, the audio).
        self._early: tuple[str, str, asyncio.Task[list[rtc.AudioFrame]]] | None = None

    def prefetch(self, turn_id: str, text: str) -> None:
        """Synthesize the first segment of ``text`` (the start of a speculative turn's
        reply), so that if the turn is confirmed its audio is ready at once."""
        ready, rest = split_ready(text)
        words = first_clause(ready[0] if ready else rest)[0].strip()
        self.drop_prefetched()
        if speakable(words):
            self._early = (turn_id, words, asyncio.create_task(self._render(words)))

    def drop_prefetched(self, turn_id: str | None = None) -> None:
        """Forget the prefetched audio (of ``turn_id`` only, if given)."""
        if self._early is not None and turn_id in (None, self._early[0]):
            self._early[2].cancel()
            self._early = None

    async def _render(self, words: str) -> list[rtc.AudioFrame]:
        async with self.tts.synthesize(words) as stream:
            return [event.frame async for event in stream]

    def _take_early(
        self, plan: ReplyPlan | None, words: str
    ) -> asyncio.Task[list[rtc.AudioFrame]] | None:
        if self._early is None or plan is None or plan.turn.turn_id != self._early[0]:
            return None
        _, early_words, task = self._early
        self._early = None
        if early_words == words:
            return task
        task.cancel()
        return None

    async def _frames(
        self, words: str, due: float | None, early: asyncio.Task[list[rtc.AudioFrame]] | None
    ) -> AsyncGenerator[rtc.AudioFrame, None]:
        try:
            if early is not None:
                if not early.done():
                    await asyncio.wait({early})
                if not early.cancelled() and early.exception() is None:
                    for frame in early.result():
                        yield frame
                    return
            synthesis: tts.ChunkedStream
            if due is not None and isinstance(self.tts, LocalTTS):
                synthesis = self.tts.synthesize(words, deadline=due)
            else:
                synthesis = self.tts.synthesize(words)
            async with synthesis as stream:
                async for event in stream:
                    yield event.frame
        finally:
            if early is not None and not early.done():
                early.cancel()

    def fetch_clip(self, url: str) -> asyncio.Future[PCM] | None:
        """Start getting a ``play`` clip now, so it is ready when the words before it end."""
        return self._clip(url, self.tts.sample_rate) if self._clip is not None else None

    async def speak(self, text: AsyncIterable[str]) -> AsyncIterator[rtc.AudioFrame]:
        """Segments as early as possible, marked for the output."""
        speech = current_speech()
        offset = 0
        playing_from: float | None = None  # time.monotonic() of this reply's first audio
        audio_s = 0.0  # audio made for this reply so far
        async for segment in segments(text, pause=self.pause, quick_start=True):
            start, offset = offset, offset + len(segment)
            words = segment.strip()
            plan = self.plans.get(speech.id) if speech is not None else None
            if segment == PLAY_MARK:
                clip = await self._take_clip(plan)
                if clip is not None:
                    marker = self._marker(plan, "", start, offset)
                    if plan is not None and plan.turn.tts_first_audio_at is None:
                        plan.turn.tts_first_audio_at = time.perf_counter()
                    for frame in self._clip_frames(clip):
                        if playing_from is None:
                            playing_from = time.monotonic()
                        audio_s += frame.duration
                        frame.userdata.update(marker)
                        marker = {}
                        yield frame
                continue
            if not speakable(words):
                continue
            marker = self._marker(plan, segment, start, offset)
            first = True
            # The first segment is what the caller waits for (and may have been made
            # already: prefetch); each later one is needed when the audio before it has
            # played (earliest deadline first).
            early = self._take_early(plan, words) if start == 0 else None
            due = None if playing_from is None else playing_from + audio_s - SYNTHESIS_MARGIN_S
            async with contextlib.aclosing(self._frames(words, due, early)) as frames:
                async for frame in frames:
                    if playing_from is None:
                        playing_from = time.monotonic()
                    audio_s += frame.duration
                    if first:
                        first = False
                        if plan is not None and plan.turn.tts_first_audio_at is None:
                            plan.turn.tts_first_audio_at = time.perf_counter()
                        frame.userdata.update(marker)
                    yield frame

    def _marker(self, plan: ReplyPlan | None, text: str, start: int, end: int) -> dict[str, Any]:
        """What a segment's first frame carries to :meth:`on_marker`."""
        marker: dict[str, Any] = {"text": text}
        if plan is not None:
            marker["interruptible"] = plan.interruptible(start, end)
            if plan.turn.tts_started_at is None:
                plan.turn.tts_started_at = time.perf_counter()
                marker["turn"] = plan.turn
        return marker

    async def _take_clip(self, plan: ReplyPlan | None) -> PCM | None:
        """The reply's next clip, once downloaded; None (and a ``webhook`` warning) if it
        cannot be played: the reply goes on with what follows it."""
        if plan is None or not plan.plays:
            return None
        url, download = plan.plays.popleft()
        if download is None:
            return None
        try:
            clip = await download
        except ClipError as err:
            self.sink.event(
                "webhook",
                f"the reply's audio clip was not played: {err.reason}: {err.detail}",
                level="warning",
                data={
                    "turnId": plan.turn.turn_id,
                    "reason": "play_failed",
                    "cause": err.reason,
                    "detail": err.detail,
                    "url": url,
                },
            )
            return None
        return clip

    def _clip_frames(self, pcm: PCM) -> list[rtc.AudioFrame]:
        rate = self.tts.sample_rate
        size = rate * FRAME_MS // 1000
        whole = -(-len(pcm) // size) * size
        padded = np.zeros(whole, np.int16)
        padded[: len(pcm)] = pcm
        return [
            rtc.AudioFrame(padded[i : i + size].tobytes(), rate, 1, size)
            for i in range(0, whole, size)
        ]

    def on_marker(self, marker: dict[str, Any], sent_at: float) -> None:
        if "interruptible" in marker:
            speech = self._playing()
            if speech is not None and not speech.interrupted:
                speech.allow_interruptions = bool(marker["interruptible"])
        turn = marker.get("turn")
        if isinstance(turn, TurnRecord) and turn.first_frame_at is None:
            turn.first_frame_at = sent_at
            self.store_turn(turn)

    def store_turn(self, turn: TurnRecord) -> None:
        """The turn's metrics, once."""
        if turn.stored:
            return
        turn.stored = True
        self.sink.turn_metrics(turn.turn_id, turn.values())
        turn.observe()
