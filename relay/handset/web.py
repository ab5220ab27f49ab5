"""A web page's side of a web call, in Python: an aiortc peer that speaks WHIP to the relay.

It does what the browser module does (``relay/api/static/relay-call.js``): an audio track
and a ``relay`` data channel in one offer, ICE gathered first, POSTed as ``application/sdp``
with the call's token. The microphone is a queue of 48 kHz PCM sent in real time (silence
when empty); what the relay says is kept with arrival times, and so are the data channel's
events. Tests and ``bench/web_voice.py`` use it::

    page = await WebPage.join(http, call["joinUrl"], call["token"])
    page.mic.say(pcm_48k)
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from relay.transports.webrtc import PacedTrack, low_latency

RATE = 48000
FRAME = RATE // 50
LOUD = 300.0  # RMS of a frame that is speech, not silence or codec noise
PCM = npt.NDArray[np.int16]


class Microphone(PacedTrack):
    """The page's microphone: what it is told to say, in real time, then silence."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[PCM] = deque()
        self.spoken = asyncio.Event()
        self.last_loud_at = 0.0  # when the last loud frame went to the encoder

    def say(self, pcm: PCM) -> None:
        """Speak ``pcm`` (48 kHz) from the next frame on, in real time."""
        pad = (-len(pcm)) % FRAME
        pcm = np.concatenate([pcm.astype(np.int16), np.zeros(pad, np.int16)])
        self.spoken.clear()
        self.queue.extend(pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME))

    def next_pcm(self) -> PCM | None:
        if not self.queue:
            return None
        pcm = self.queue.popleft()
        if np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > LOUD:
            self.last_loud_at = time.perf_counter()
        if not self.queue:
            self.spoken.set()
        return pcm


class WebPage:
    """One web call from the page's side."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.mic = Microphone()
        # A browser's receive buffer on a LAN is a packet or two, not aiortc's default five.
        self.pc.addTrack(self.mic)
        low_latency(self.pc.getTransceivers()[0].receiver)
        self.events: list[dict[str, Any]] = []
        self.event_arrived = asyncio.Event()
        self.heard: list[tuple[float, PCM]] = []
        self._levels: list[float] = []  # each heard frame's RMS, measured once
        self.channel = self.pc.createDataChannel("relay")
        self.channel.on("message", self._on_message)
        self._open = asyncio.Event()
        self.channel.on("open", self._open.set)
        self.pc.on("track", self._on_track)
        self._reader: asyncio.Task[None] | None = None
        self.location: str | None = None

    async def channel_open(self) -> None:
        await self._open.wait()

    def _on_message(self, message: str) -> None:
        self.events.append(json.loads(message))
        self.event_arrived.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        mono = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for out in mono.resample(frame):
                pcm: PCM = out.to_ndarray().reshape(-1).astype(np.int16)
                self.heard.append((time.perf_counter(), pcm))
                self._levels.append(float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def answered(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def wait_event(
        self, check: Callable[[dict[str, Any]], Any], within: float = 30.0
    ) -> dict[str, Any]:
        """The first event ``check`` accepts, waiting up to ``within`` seconds for it."""
        deadline = time.monotonic() + within
        while True:
            for event in self.events:
                if check(event):
                    return event
            assert time.monotonic() < deadline, f"no such event in {self.events}"
            self.event_arrived.clear()
            try:
                await asyncio.wait_for(self.event_arrived.wait(), 0.2)
            except TimeoutError:
                pass

    def audio(self, since: float = 0.0) -> PCM:
        parts = [pcm for t, pcm in self.heard if t >= since]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def first_loud_after(self, since: float, level: float = 300.0) -> float | None:
        """When the first frame louder than ``level`` (RMS) arrived at or after ``since``."""
        start = bisect.bisect_left(self.heard, since, key=lambda item: item[0])
        for i in range(start, len(self.heard)):
            if self._levels[i] > level:
                return self.heard[i][0]
        return None

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    @classmethod
    async def join(
        cls, http: Any, join_url: str, token: str, page: WebPage | None = None
    ) -> WebPage:
        """POST the page's offer to ``join_url`` (with an ``aiohttp`` session or a test
        client, for which a path will do) and apply the answer."""
        page = page or cls()
        resp = await http.post(
            join_url,
            data=await page.offer(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
        )
        if resp.status != 201:
            raise WebCallRefused(resp.status, await resp.text())
        page.location = resp.headers["Location"]
        await page.answered(await resp.text())
        return page


class WebCallRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the relay refused the offer: {status} {body}")
        self.status = status
        self.body = body
