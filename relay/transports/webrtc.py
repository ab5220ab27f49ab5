"""The WebRTC transport: a browser's call, terminated by the relay's own aiortc peer.

The page's WHIP offer (:mod:`relay.transports.webrtc_protocol`) is answered by
:meth:`WebrtcPeer.answer`; Opus is decoded to 48 kHz PCM and handed to the engine as it is
(the engine resamples once, to its 16 kHz), and the engine speaks 48 kHz straight into an
outgoing track that aiortc encodes as Opus. Barge-in drops the audio not yet sent, so the
page hears silence at once: there is no far-end buffer to clear.

A page that vanishes (tab closed, network lost) stops sending RTP; a browser sends a packet
every 20 ms even in silence, so :data:`CALLER_SILENT_SECONDS` without one ends the call as
the caller's hang-up, long before ICE consent freshness (RFC 7675, ~30 s in aioice) would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections import deque
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from relay.engine.ports import PCM, CallHandle
from relay.logs import get_logger
from relay.transports import BadFrame, Handshake, Note
from relay.transports import webrtc_protocol as wp
from relay.transports.jitter import AudioJitterBuffer

log = get_logger("relay.transports.webrtc")

CALLER_SILENT_SECONDS = 3.0
# The peer's track must arrive this soon after the answer (ICE and DTLS on a LAN: < 1 s).
TRACK_TIMEOUT_SECONDS = 15.0
# Outgoing audio the track may hold: the engine and the track both tick every 20 ms, so a
# few frames absorb their jitter; more would only be latency.
MAX_QUEUED_FRAMES = 6
EVENTS_FLUSH_SECONDS = 1.0
# Events from before the data channel opens (the engine starts as the answer goes out) wait
# for it, up to this many.
MAX_EARLY_EVENTS = 50
_TIME_BASE = fractions.Fraction(1, wp.RATE)
# What aiortc raises for an offer it cannot take (its parser's errors and its own).
_REFUSED = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    InternalError,
    InvalidAccessError,
    InvalidStateError,
)
# Opus packets aiortc holds before decoding one (its default, 4, is 80 ms more before the
# VAD hears the caller's last word); one still puts a packet that overtook another in order.
JITTER_PREFETCH_PACKETS = 1


_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def low_latency(receiver: RTCRtpReceiver) -> None:
    """A shorter receive buffer for ``receiver``'s audio, aiortc's own with one packet (a
    browser's on a LAN: what the measuring pages use). aiortc does not expose it: its private
    attribute is replaced, and left alone should a later aiortc rename it."""
    if isinstance(getattr(receiver, _JITTER_BUFFER, None), JitterBuffer):
        setattr(
            receiver, _JITTER_BUFFER, JitterBuffer(capacity=16, prefetch=JITTER_PREFETCH_PACKETS)
        )


def prompt_audio(receiver: RTCRtpReceiver) -> None:
    """The relay's receive buffer for the caller's audio: each packet to the decoder the moment
    it is the next in sequence (:mod:`relay.transports.jitter`), 20 ms sooner than aiortc's."""
    if isinstance(getattr(receiver, _JITTER_BUFFER, None), JitterBuffer):
        setattr(receiver, _JITTER_BUFFER, AudioJitterBuffer())


class PacedTrack(MediaStreamTrack):
    """An audio track of 20 ms, 48 kHz frames at real-time pace: each frame is what
    :meth:`next_pcm` gives, or silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._samples = 0
        self._silence = np.zeros(wp.FRAME_SAMPLES, np.int16)

    def next_pcm(self) -> PCM | None:
        return None

    async def _until(self, at: float) -> None:
        """Wait for the next frame's moment (``time.monotonic()``)."""
        await asyncio.sleep(at - time.monotonic())

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._samples += wp.FRAME_SAMPLES
            await self._until(self._start + self._samples / wp.RATE)
        pcm = self.next_pcm()
        if pcm is None:
            pcm = self._silence
        elif len(pcm) < wp.FRAME_SAMPLES:
            pcm = np.concatenate([pcm, np.zeros(wp.FRAME_SAMPLES - len(pcm), np.int16)])
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = wp.RATE
        frame.pts = self._samples
        frame.time_base = _TIME_BASE
        return frame


class AgentTrack(PacedTrack):
    """The agent's voice: the engine's frames as they come, silence when it has none."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[PCM] = deque()
        self._arrived = asyncio.Event()

    def put(self, pcm: PCM) -> None:
        for i in range(0, len(pcm), wp.FRAME_SAMPLES):
            self._queue.append(pcm[i : i + wp.FRAME_SAMPLES])
        while len(self._queue) > MAX_QUEUED_FRAMES:
            self._queue.popleft()
        self._arrived.set()

    async def _until(self, at: float) -> None:
        """While silence goes out, the first frame of a reply goes at once rather than at the
        next 20 ms slot (10 ms sooner on average); the frames after it keep the slots."""
        if self._queue:
            await super()._until(at)
            return
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), max(0.0, at - time.monotonic()))

    def drop(self) -> None:
        self._queue.clear()

    def next_pcm(self) -> PCM | None:
        return self._queue.popleft() if self._queue else None


class WebrtcLine:
    """The engine's way back to the page (a :class:`~relay.engine.ports.CallerLine` and a
    :class:`~relay.engine.ports.LiveView`)."""

    sample_rate = wp.RATE

    def __init__(self, peer: WebrtcPeer) -> None:
        self._peer = peer

    async def send_audio(self, pcm: PCM) -> None:
        self._peer.track.put(pcm)

    async def clear(self) -> None:
        self._peer.track.drop()

    async def send_dtmf(self, digits: str) -> None:
        """Not applicable to a browser: nothing to press keys at."""

    async def transfer(self, to: str) -> None:
        self._peer.live_event({"type": "transfer", "to": to})

    async def hangup(self) -> None:
        await self._peer.close()

    def live_event(self, event: dict[str, Any]) -> None:
        self._peer.live_event(event)


class WebrtcPeer:
    """One browser's peer connection (a :class:`~relay.transports.MediaConnection`)."""

    connection_types: tuple[str, ...] = ("webrtc",)

    def __init__(self, ice_servers: list[dict[str, Any]]) -> None:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers
        ]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.track = AgentTrack()
        self._remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self._events: RTCDataChannel | None = None
        self._early: list[str] = []
        self._closed = asyncio.Event()
        self._call_id: str | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    # ------------------------------------------------------------------ signalling

    async def answer(self, offer: str) -> str:
        """The SDP answer to the page's offer, ICE candidates gathered (raises
        :class:`~relay.transports.webrtc_protocol.SdpRefused`)."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except _REFUSED as exc:
            await self.close()
            raise wp.SdpRefused("invalid_sdp", wp.NOT_ACCEPTED.format(why=exc)) from exc
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        if not audio:
            await self.close()
            raise wp.SdpRefused("no_audio", wp.NO_AUDIO)
        prompt_audio(audio[0].receiver)
        audio[0].setCodecPreferences(opus)
        audio[0].sender.replaceTrack(self.track)
        audio[0].direction = "sendrecv"
        try:
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except _REFUSED as exc:
            await self.close()
            raise wp.SdpRefused("no_audio", wp.NOT_ACCEPTED.format(why=exc)) from exc
        return self.pc.localDescription.sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._remote.done():
            self._remote.set_result(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != wp.EVENTS_LABEL:
            return
        self._events = channel
        if channel.readyState == "open":
            self._flush_early()
        else:
            channel.once("open", self._flush_early)

    def _flush_early(self) -> None:
        early, self._early = self._early, []
        for text in early:
            self._send(text)

    def _send(self, text: str) -> None:
        channel = self._events
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(Exception):  # the page is gone: the pump will notice
                channel.send(text)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            log.info("webrtc_connection_gone", call_id=self._call_id, state=self.pc.connectionState)
            self._closed.set()

    def live_event(self, event: dict[str, Any]) -> None:
        text = wp.event_text(event)
        channel = self._events
        if channel is not None and channel.readyState == "open":
            self._send(text)
        elif len(self._early) < MAX_EARLY_EVENTS and self.pc.connectionState != "closed":
            self._early.append(text)

    async def close(self) -> None:
        """Hang up: let the last events reach the page, then close the connection."""
        if self.pc.connectionState == "closed":
            return
        channel = self._events
        if channel is not None and channel.readyState == "open" and channel.bufferedAmount > 0:
            drained = asyncio.Event()
            channel.once("bufferedamountlow", drained.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), EVENTS_FLUSH_SECONDS)
        self.track.stop()
        await self.pc.close()
        self._closed.set()

    # ------------------------------------------------------------------ MediaConnection

    async def handshake(self) -> Handshake:
        return Handshake()  # the token was checked on the WHIP request

    async def refuse(self, why: str) -> None:
        log.info("media_socket_refused", transport="webrtc", reason=why)
        await self.close()

    async def accept(self, call_id: str, note: Note) -> WebrtcLine:
        self._call_id = call_id
        return WebrtcLine(self)

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        try:
            track = await asyncio.wait_for(asyncio.shield(self._remote), TRACK_TIMEOUT_SECONDS)
        except TimeoutError:
            log.info("webrtc_no_track", call_id=handle.call_id)
            return
        # Format and layout only (any Opus decode to 16-bit mono): the rate stays 48 kHz.
        mono = av.AudioResampler(format="s16", layout="mono", rate=wp.RATE)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while not self._closed.is_set():
                frame_task = asyncio.ensure_future(track.recv())
                done, _ = await asyncio.wait(
                    {frame_task, closed},
                    timeout=CALLER_SILENT_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if frame_task not in done:
                    frame_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                        await frame_task
                    if not done:
                        log.info("webrtc_caller_silent", call_id=handle.call_id)
                    return
                try:
                    frame = frame_task.result()
                except MediaStreamError:
                    return
                if not isinstance(frame, av.AudioFrame):
                    await bad_frame("not an audio frame", repr(frame)[:200])
                    continue
                for out in mono.resample(frame):
                    pcm: PCM = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    handle.push_audio(pcm, out.sample_rate)
        finally:
            closed.cancel()
