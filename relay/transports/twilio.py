"""Twilio Media Streams transport: a call's audio over Twilio's bidirectional websocket.

The media token arrives in the URL's query (``?token=``, checked before the upgrade) or, as
Twilio recommends since it may drop query strings, as the ``token`` custom parameter of the
``start`` frame. The sim carrier's handset speaks this same protocol.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.engine.ports import PCM, CallHandle
from relay.logs import get_logger
from relay.transports import BadFrame, Handshake, Note
from relay.transports import twilio_protocol as tp
from relay.transports.control import CallControl, Controlled, ControlLookup

log = get_logger("relay.transports.twilio")

RATE = 8000
FRAME_BYTES = RATE * 20 // 1000  # 160 mu-law bytes = 20 ms
START_TIMEOUT_SECONDS = 10.0

_DTMF_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip


def dtmf_tones(digits: str, rate: int = RATE, *, tone_ms: int = 100, gap_ms: int = 60) -> PCM:
    """In-band DTMF (Media Streams has no out-of-band digits): tones and gaps; ``w`` waits
    half a second."""
    parts: list[PCM] = []
    t = np.arange(rate * tone_ms // 1000) / rate
    gap = np.zeros(rate * gap_ms // 1000, dtype=np.int16)
    for digit in digits.upper():
        if digit == "W":
            parts.append(np.zeros(rate // 2, dtype=np.int16))
            continue
        low, high = _DTMF_FREQS[digit]
        wave = 0.3 * (np.sin(2 * math.pi * low * t) + np.sin(2 * math.pi * high * t))
        parts += [(wave * 32767).astype(np.int16), gap]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class TwilioLine:
    """The engine's way back to a Twilio caller (a :class:`~relay.engine.ports.CallerLine`)."""

    sample_rate = RATE

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stream_sid: str,
        note: Note,
        call_sid: str = "",
        control: CallControl | None = None,
    ):
        self._ws = ws
        self._sid = stream_sid
        self._carrier = Controlled(call_sid, note, control)

    async def _send(self, text: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(text)

    async def send_audio(self, pcm: PCM) -> None:
        data = ulaw_encode(pcm)
        for i in range(0, len(data), FRAME_BYTES):
            await self._send(tp.media(self._sid, data[i : i + FRAME_BYTES]))

    async def clear(self) -> None:
        await self._send(tp.clear(self._sid))

    async def send_dtmf(self, digits: str) -> None:
        # In band even with Twilio's REST API at hand: a Calls update with <Play digits>
        # replaces the running TwiML, which would end this very stream.
        await self.send_audio(dtmf_tones(digits))

    async def transfer(self, to: str) -> None:
        """Twilio's Calls update with ``<Dial>`` TwiML (:mod:`relay.transports.control`);
        without it (or if Twilio refused) the ``<Connect action>`` Twilio asks once the
        stream ends is answered with the same ``<Dial>``."""
        await self._carrier.transfer(to)

    def carrier_ended_stream(self) -> None:
        self._carrier.carrier_ended_stream()

    async def hangup(self) -> None:
        if not self._ws.closed:  # a closed stream: Twilio's next verb hangs up already
            await self._carrier.hangup()
            await self._ws.close()


async def _wait_for_start(ws: web.WebSocketResponse) -> tp.Start | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_SECONDS
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return None
        if msg.type != WSMsgType.TEXT:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None
            continue
        try:
            event = tp.parse(msg.data)
        except tp.ProtocolError as exc:
            # Twilio sends `connected` then `start`: anything malformed before the call is
            # identified ends the socket, so it cannot be held open with garbage.
            raise StartRefused(f"bad frame before start: {exc}") from exc
        if isinstance(event, tp.Start):
            return event
    return None


class StartRefused(Exception):
    """The socket's first frames were not Twilio's ``connected`` and ``start``."""


class TwilioConnection:
    """A Twilio Media Streams socket (a :class:`~relay.transports.MediaConnection`)."""

    connection_types: tuple[str, ...] = ("twilio", "sim")

    def __init__(self, ws: web.WebSocketResponse, controls: ControlLookup | None = None) -> None:
        self._ws = ws
        self._controls = controls
        self._line: TwilioLine | None = None
        self._start: tp.Start | None = None

    async def handshake(self) -> Handshake | None:
        try:
            self._start = await _wait_for_start(self._ws)
        except StartRefused as exc:
            await self.refuse(str(exc))
            return None
        if self._start is None:
            await self.refuse("no start frame")
            return None
        return Handshake(
            token=self._start.custom_parameters.get("token"),
            carrier_call_id=self._start.call_sid or None,
        )

    async def refuse(self, why: str) -> None:
        log.info("media_socket_refused", transport="twilio", reason=why)
        await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why.encode()[:120])

    async def accept(self, call_id: str, note: Note) -> TwilioLine:
        assert self._start is not None, "accept() follows a handshake"
        control = await self._controls(call_id) if self._controls is not None else None
        self._line = TwilioLine(
            self._ws, self._start.stream_sid, note, self._start.call_sid, control
        )
        return self._line

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        await self._pump(handle, bad_frame)
        # Stopped or closed (not cancelled: the relay ending the call cancels the pump):
        # the call moves on in its answer document, no longer the relay's to end.
        if self._line is not None:
            self._line.carrier_ended_stream()

    async def _pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        call_id = handle.call_id
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    event = tp.parse(msg.data)
                except tp.ProtocolError as exc:
                    await bad_frame(str(exc), msg.data)
                    continue
                if isinstance(event, tp.Media):
                    handle.push_audio(ulaw_decode(event.payload), RATE)
                elif isinstance(event, tp.Dtmf):
                    handle.push_dtmf(event.digit)
                elif isinstance(event, tp.Stop):
                    log.info("carrier_stop", call_id=call_id)
                    return
            elif msg.type == WSMsgType.BINARY:
                await bad_frame("binary frame (Media Streams frames are JSON text)", msg.data)
        log.info("carrier_socket_closed", call_id=call_id)
