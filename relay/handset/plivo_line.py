"""The phone's side of a Plivo call: the audio stream as Plivo speaks it
(:class:`PlivoMediaLine`, opened by :class:`relay.handset.fake_plivo.FakePlivo`) and a
caller whose calls reach the relay through the fake Plivo (:class:`PlivoHandset`)."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import aiohttp

from relay.engine.codecs import ulaw_decode
from relay.handset.voice import HandsetError, MediaLine, SimHandset
from relay.transports import plivo_protocol as pp

if TYPE_CHECKING:  # the fake imports this module for its lines
    from relay.handset.fake_plivo import FakePlivo, FakePlivoAccount, StreamedCall


class PlivoMediaLine(MediaLine):
    """Plivo's side of the audio stream: it sends ``media``/``dtmf`` and plays ``playAudio``
    at once (so ``checkpoint`` is answered when it arrives)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, stream_id: str) -> None:
        super().__init__(ws, stream_id)
        self.chunk = 0
        self.checkpoints: list[str] = []

    def media_frame(self, data: bytes) -> str:
        self.chunk += 1
        media = {
            "track": "inbound",
            "timestamp": str(self.chunk * 20),
            "chunk": self.chunk,
            "payload": base64.b64encode(data).decode(),
        }
        return json.dumps(
            {"event": "media", "sequenceNumber": self.chunk, "streamId": self.sid, "media": media}
        )

    def dtmf_frame(self, digit: str) -> str:
        return json.dumps(
            {"event": "dtmf", "streamId": self.sid, "dtmf": {"digit": digit, "track": "inbound"}}
        )

    async def on_frame(self, frame: dict[str, Any], now: float) -> None:
        event = frame.get("event")
        if event == "playAudio":
            media = frame["media"]
            if media.get("contentType") != pp.CONTENT_TYPE or media.get("sampleRate") != 8000:
                raise ValueError(f"the stream is mu-law 8 kHz, not {media}")
            self.heard(now, ulaw_decode(base64.b64decode(media["payload"])))
        elif event == "clearAudio":
            self.clears.append(now)
            await self.ws.send_str(json.dumps({"event": "clearedAudio", "streamId": self.sid}))
        elif event == "checkpoint":
            self.checkpoints.append(frame["name"])
            played = {"event": "playedStream", "streamId": self.sid, "name": frame["name"]}
            await self.ws.send_str(json.dumps(played))


class PlivoHandset(SimHandset):
    """A caller on Plivo: the call reaches the relay through :class:`FakePlivo`'s answer
    webhook and audio stream instead of the sim carrier's. ``answer_url`` is the number's
    answer URL at Plivo (the relay's ``/carriers/plivo/voice?authId=...``)."""

    def __init__(
        self, fake: FakePlivo, answer_url: str, account: FakePlivoAccount, **kwargs: Any
    ) -> None:
        super().__init__("http://unused.invalid", "", **kwargs)
        self.fake = fake
        self.answer_url = answer_url
        self.account = account
        self.streamed: StreamedCall | None = None

    async def _connect(self, http: aiohttp.ClientSession, number: str) -> tuple[str, MediaLine]:
        call = await self.fake.incoming_call(
            http, self.answer_url, self.from_number, number, self.account
        )
        self.streamed = call
        if call.stream_url is None:
            raise HandsetError(f"the relay answered without a <Stream>: {call.answer[:200]}")
        line = await self.fake.open_stream(http, call, self.account)
        return call.extra_headers.get("callId", ""), line

    async def _hang_up(self, line: MediaLine) -> None:
        if isinstance(line, PlivoMediaLine) and self.streamed is not None:
            self.streamed.checkpoints = line.checkpoints
            self.streamed.clears = len(line.clears)


__all__ = ["PlivoHandset", "PlivoMediaLine"]
