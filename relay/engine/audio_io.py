"""The call's audio in and out of the livekit session.

:class:`CallAudioInput` takes the transport's frames (any rate, any size) and hands the
session 8 or 16 kHz frames, the rates Silero and the recognizers want.

:class:`CallAudioOutput` is the only clock of outbound audio: it cuts the session's audio
into 20 ms frames and writes one per 20 ms of wall time to the caller line, on a monotonic
deadline schedule, so it knows exactly how much the caller has heard when they barge in.
Frames may carry ``userdata``: a ``text`` entry says which words the audio from that frame on
speaks (so an interrupted reply is cut to the words actually played, by their share of the
audio); any other entries are a marker, reported with the time once the first 20 ms of its
frame has been written to the line.

Both carry an optional ``tap`` (the call recording): the input's sees each caller frame as
it arrives, at the session rate; the output's sees each agent frame as it goes to the line,
with the time it went, so a reply cut by a barge-in is tapped only as far as it was played.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr
from livekit import rtc
from livekit.agents.voice import io

from relay.engine.codecs import PCM
from relay.engine.ports import FRAME_MS, CallerLine
from relay.logs import get_logger

log = get_logger("relay.engine.audio")

_EOF = object()
MAX_LAG_S = 0.2  # behind schedule by more than this: restart the schedule, don't burst


def session_rate(line_rate: int) -> int:
    return 8000 if line_rate <= 8000 else 16000


class CallAudioInput(io.AudioInput):
    def __init__(self, *, sample_rate: int) -> None:
        super().__init__(label="call")
        self.sample_rate = sample_rate
        self._queue: asyncio.Queue[rtc.AudioFrame | object] = asyncio.Queue()
        self._resamplers: dict[int, Any] = {}
        self.last_push_at = 0.0
        self.tap: Callable[[PCM, int, float], None] | None = None

    def push(self, pcm: PCM, rate: int) -> None:
        """Non-blocking; called by the transport for every frame it decodes."""
        self.last_push_at = time.perf_counter()
        if rate != self.sample_rate:
            stream = self._resamplers.get(rate)
            if stream is None:
                stream = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="int16", quality="HQ")
                self._resamplers[rate] = stream
            pcm = stream.resample_chunk(pcm)
            if not len(pcm):
                return
        data = np.ascontiguousarray(pcm, dtype=np.int16)
        if self.tap is not None:
            self.tap(data, self.sample_rate, self.last_push_at)
        self._queue.put_nowait(
            rtc.AudioFrame(
                data=data.tobytes(),
                sample_rate=self.sample_rate,
                num_channels=1,
                samples_per_channel=len(data),
            )
        )

    def close(self) -> None:
        self._queue.put_nowait(_EOF)

    async def __anext__(self) -> rtc.AudioFrame:
        item = await self._queue.get()
        if item is _EOF:
            self._queue.put_nowait(_EOF)
            raise StopAsyncIteration
        assert isinstance(item, rtc.AudioFrame)
        return item


class _Segment:
    __slots__ = ("buf", "pos", "flushed", "started", "markers", "texts", "spoken")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.flushed = False
        self.started = False
        self.markers: deque[tuple[int, dict[str, Any]]] = deque()
        self.texts: list[tuple[int, str]] = []  # (byte offset where its audio starts, text)
        self.spoken = 0  # how many of ``texts`` have started playing

    def heard(self) -> str:
        """The text whose audio has been played, to the last whole word."""
        pieces: list[str] = []
        for i, (start, text) in enumerate(self.texts):
            end = self.texts[i + 1][0] if i + 1 < len(self.texts) else len(self.buf)
            if self.pos >= end:
                pieces.append(text.strip())
                continue
            if self.pos > start and end > start:
                pieces.append(heard_part(text, (self.pos - start) / (end - start)))
            break
        return " ".join(p for p in pieces if p)


def heard_part(text: str, fraction: float) -> str:
    """The words of ``text`` that end within the first ``fraction`` of it (by characters,
    a fair proxy for their share of the audio)."""
    body = text.strip()
    limit = fraction * len(body)
    words: list[str] = []
    pos = 0
    for word in body.split():
        pos = body.index(word, pos) + len(word)
        if pos > limit:
            break
        words.append(word)
    return " ".join(words)


class CallAudioOutput(io.AudioOutput):
    """Paces 20 ms frames to ``line.send_audio``; ``clear_buffer`` stops at once."""

    def __init__(
        self,
        line: CallerLine,
        *,
        on_marker: Callable[[dict[str, Any], float], None] | None = None,
        on_line_error: Callable[[BaseException], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            label="call",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=line.sample_rate,
        )
        self.line = line
        self.rate = line.sample_rate
        self.frame_bytes = self.rate * FRAME_MS // 1000 * 2
        self.on_marker = on_marker
        self.on_line_error = on_line_error
        self.on_text = on_text  # the words whose audio has just started playing
        self._segments: deque[_Segment] = deque()
        self._open: _Segment | None = None
        self._discard_until_flush = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._clear_task: asyncio.Task[None] | None = None
        self._paused = False
        self.frames_sent = 0
        self.last_frame_at = 0.0
        self.tap: Callable[[PCM, int, float], None] | None = None

    @property
    def playing(self) -> bool:
        return bool(self._segments)

    @property
    def paused(self) -> bool:
        return self._paused

    def hold(self) -> None:
        """Stop sending at the next frame, keeping the place (a backchannel is screened)."""
        self._paused = True

    def release(self) -> None:
        """Go on from where :meth:`hold` stopped."""
        self._paused = False
        self._wake.set()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._discard_until_flush:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._playout(), name="call-audio-playout")
        if self._open is None:
            self._open = _Segment()
            self._segments.append(self._open)
        if frame.userdata:
            marker = dict(frame.userdata)
            text = marker.pop("text", None)
            if isinstance(text, str):
                self._open.texts.append((len(self._open.buf), text))
            if marker:
                self._open.markers.append((len(self._open.buf), marker))
        self._open.buf += frame.data.cast("B")
        self._wake.set()

    def flush(self) -> None:
        super().flush()
        self._discard_until_flush = False
        if self._open is not None:
            self._open.flushed = True
            self._open = None
            self._wake.set()

    def clear_buffer(self) -> None:
        self._paused = False
        had_audio = bool(self._segments)
        if self._open is not None:
            self._discard_until_flush = True
        self._open = None
        while self._segments:
            self._finish(self._segments.popleft(), interrupted=True)
        self._wake.set()
        if had_audio and (self._clear_task is None or self._clear_task.done()):
            self._clear_task = asyncio.create_task(self._clear_line())

    async def _clear_line(self) -> None:
        try:
            await self.line.clear()
        except Exception as exc:  # the transport is gone; the session will notice
            if self.on_line_error is not None:
                self.on_line_error(exc)

    def _finish(self, seg: _Segment, *, interrupted: bool) -> None:
        played = min(seg.pos, len(seg.buf)) / 2 / self.rate
        heard = seg.heard() if interrupted and seg.texts else None
        self.on_playback_finished(
            playback_position=played, interrupted=interrupted, synchronized_transcript=heard
        )

    async def _playout(self) -> None:
        period = FRAME_MS / 1000
        deadline = time.monotonic()
        size = self.frame_bytes
        while True:
            seg = self._segments[0] if self._segments else None
            if seg is None or self._paused or (len(seg.buf) - seg.pos < size and not seg.flushed):
                self._wake.clear()
                await self._wake.wait()
                # The audio ran out (TTS behind, between replies, paused): the schedule
                # starts again from now. Catching up would send the next frames in a burst.
                deadline = max(deadline, time.monotonic())
                continue
            if seg.pos >= len(seg.buf):
                self._segments.popleft()
                self._finish(seg, interrupted=False)
                continue
            now = time.monotonic()
            if now - deadline > MAX_LAG_S:
                deadline = now
            chunk = bytes(seg.buf[seg.pos : seg.pos + size])
            if len(chunk) < size:
                chunk += bytes(size - len(chunk))
            markers = []
            while seg.markers and seg.markers[0][0] < seg.pos + size:
                markers.append(seg.markers.popleft()[1])
            if not seg.started:
                seg.started = True
                self.on_playback_started(created_at=time.time())
            pcm: PCM = np.frombuffer(chunk, dtype=np.int16)
            playing_at = time.perf_counter()
            try:
                await self.line.send_audio(pcm)
            except Exception as exc:
                if self.on_line_error is not None:
                    self.on_line_error(exc)
            else:
                if self.tap is not None:
                    self.tap(pcm, self.rate, playing_at)
            sent_at = time.perf_counter()
            if self.on_marker is not None:
                for marker in markers:
                    self.on_marker(marker, sent_at)
            while seg.spoken < len(seg.texts) and seg.texts[seg.spoken][0] < seg.pos + size:
                if self.on_text is not None:
                    self.on_text(seg.texts[seg.spoken][1])
                seg.spoken += 1
            self.frames_sent += 1
            self.last_frame_at = sent_at
            # the segment may have been cleared while send_audio ran
            if self._segments and self._segments[0] is seg:
                seg.pos = min(seg.pos + size, len(seg.buf))
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        for task in (self._task, self._clear_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = None
