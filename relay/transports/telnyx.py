"""Telnyx media streaming transport: a call's audio over Telnyx's bidirectional websocket.

The media token is in the stream URL's query, checked before the upgrade. Closing the socket
does not end a Telnyx call (the call outlives its stream), so the line's hang-up, transfer
and DTMF go through Call Control (:mod:`relay.transports.control`; ``control`` is given by
whoever opened the socket; a BYOT call has none: its Telnyx call is its developer's).
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, WSMsgType, web

from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.engine.ports import PCM, CallHandle
from relay.logs import get_logger
from relay.transports import BadFrame, Handshake, Note
from relay.transports import telnyx_protocol as tp
from relay.transports.control import CallControl, Controlled
from relay.transports.twilio import dtmf_tones

log = get_logger("relay.transports.telnyx")

RATE = 8000
FRAME_BYTES = RATE * 20 // 1000  # 160 mu-law bytes = 20 ms
START_TIMEOUT_SECONDS = 10.0


class TelnyxLine:
    """The engine's way back to a Telnyx caller (a :class:`~relay.engine.ports.CallerLine`)."""

    sample_rate = RATE

    def __init__(
        self,
        ws: web.WebSocketResponse,
        call_control_id: str,
        note: Note,
        control: CallControl | None,
    ) -> None:
        self._ws = ws
        self._carrier = Controlled(call_control_id, note, control)

    async def _send(self, text: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(text)

    async def send_audio(self, pcm: PCM) -> None:
        data = ulaw_encode(pcm)
        for i in range(0, len(data), FRAME_BYTES):
            await self._send(tp.media(data[i : i + FRAME_BYTES]))

    async def clear(self) -> None:
        await self._send(tp.clear())

    async def send_dtmf(self, digits: str) -> None:
        """Call Control's ``send_dtmf`` on a call of our numbers, else tones."""
        await self._carrier.send_digits(digits, self._tones)

    async def _tones(self, digits: str) -> None:
        await self.send_audio(dtmf_tones(digits))

    async def transfer(self, to: str) -> None:
        """Telnyx dials ``to`` and bridges the caller to it; this stream ends."""
        await self._carrier.transfer(to)

    async def hangup(self) -> None:
        if not self._ws.closed:
            await self._ws.close()
        await self._carrier.hangup()  # the call outlives its stream: always at Telnyx


class StartRefused(Exception):
    """The socket's first frames were not Telnyx's ``connected`` and a usable ``start``."""


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
            raise StartRefused(f"bad frame before start: {exc}") from exc
        if isinstance(event, tp.Start):
            if event.encoding.upper() != "PCMU" or event.sample_rate != RATE:
                raise StartRefused(f"unsupported media {event.encoding}/{event.sample_rate}")
            return event
    return None


class TelnyxConnection:
    """A Telnyx media streaming socket (a :class:`~relay.transports.MediaConnection`)."""

    connection_types: tuple[str, ...] = ("telnyx",)

    def __init__(self, ws: web.WebSocketResponse, control: CallControl | None = None) -> None:
        self._ws = ws
        self._control = control
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
        return Handshake(carrier_call_id=self._start.call_control_id or None)

    async def refuse(self, why: str) -> None:
        log.info("media_socket_refused", transport="telnyx", reason=why)
        await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why.encode()[:120])

    async def accept(self, call_id: str, note: Note) -> TelnyxLine:
        assert self._start is not None, "accept() follows a handshake"
        return TelnyxLine(self._ws, self._start.call_control_id, note, self._control)

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        call_id = handle.call_id
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    event = tp.parse(msg.data)
                except tp.ProtocolError as exc:
                    await bad_frame(str(exc), msg.data)
                    continue
                if isinstance(event, tp.Media):
                    if event.track == "inbound":
                        handle.push_audio(ulaw_decode(event.payload), RATE)
                elif isinstance(event, tp.Dtmf):
                    handle.push_dtmf(event.digit)
                elif isinstance(event, tp.Error):
                    log.warning("telnyx_stream_error", call_id=call_id, code=event.code)
                elif isinstance(event, tp.Stop):
                    log.info("carrier_stop", call_id=call_id)
                    return
            elif msg.type == WSMsgType.BINARY:
                await bad_frame("binary frame (Telnyx media frames are JSON text)", msg.data)
        log.info("carrier_socket_closed", call_id=call_id)
