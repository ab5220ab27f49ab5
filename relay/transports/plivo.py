"""Plivo audio stream transport: a call's audio over Plivo's bidirectional websocket.

The media token arrives in the URL's query (``?token=``, checked before the upgrade) or in
the ``start`` event's ``extra_headers`` (the answer XML puts it in both). Audio back goes
out as ``playAudio`` frames of 20 ms; a barge-in is a ``clearAudio``. Plivo's stream
carries no out-of-band digits the other way, so DTMF to the caller goes through Plivo's
Call API (:mod:`relay.transports.control`), or is played as tones on a call without it.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, WSMsgType, web

from relay.engine.codecs import ulaw_decode, ulaw_encode
from relay.engine.ports import PCM, CallHandle
from relay.logs import get_logger
from relay.transports import BadFrame, Handshake, Note
from relay.transports import plivo_protocol as pp
from relay.transports.control import CallControl, Controlled, ControlLookup
from relay.transports.twilio import dtmf_tones

log = get_logger("relay.transports.plivo")

RATE = 8000
FRAME_BYTES = RATE * 20 // 1000  # 160 mu-law bytes = 20 ms
START_TIMEOUT_SECONDS = 10.0
CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class PlivoLine:
    """The engine's way back to a Plivo caller (a :class:`~relay.engine.ports.CallerLine`)."""

    sample_rate = RATE

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stream_id: str,
        note: Note,
        call_uuid: str = "",
        control: CallControl | None = None,
    ):
        self._ws = ws
        self._id = stream_id
        self._carrier = Controlled(call_uuid, note, control)

    async def _send(self, text: str) -> None:
        if not self._ws.closed:
            await self._ws.send_str(text)

    async def send_audio(self, pcm: PCM) -> None:
        data = ulaw_encode(pcm)
        for i in range(0, len(data), FRAME_BYTES):
            await self._send(pp.play_audio(self._id, data[i : i + FRAME_BYTES]))

    async def clear(self) -> None:
        await self._send(pp.clear_audio(self._id))

    async def send_dtmf(self, digits: str) -> None:
        """Plivo's ``Call/{uuid}/DTMF/`` when the call is one of our numbers', else tones."""
        await self._carrier.send_digits(digits, self._tones)

    async def _tones(self, digits: str) -> None:
        await self.send_audio(dtmf_tones(digits))

    async def transfer(self, to: str) -> None:
        """Plivo's Call transfer to the relay's ``<Dial>`` document; without it (or if Plivo
        refused) the answer's ``<Redirect>``, followed once the stream ends, dials."""
        await self._carrier.transfer(to)

    def carrier_ended_stream(self) -> None:
        self._carrier.carrier_ended_stream()

    async def hangup(self) -> None:
        if not self._ws.closed:  # a closed stream: Plivo's next verb hangs up already
            await self._carrier.hangup()
            await self._ws.close()


class StartRefused(Exception):
    """The socket's first frame was not Plivo's ``start``."""


async def _wait_for_start(ws: web.WebSocketResponse) -> pp.Start | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_SECONDS
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return None
        if msg.type in CLOSED:
            return None
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            event = pp.parse(msg.data)
        except pp.ProtocolError as exc:
            # Anything malformed before the call is named ends the socket: it cannot be
            # held open with garbage.
            raise StartRefused(f"bad frame before start: {exc}") from exc
        if isinstance(event, pp.Start):
            return event
    return None


class PlivoConnection:
    """A Plivo audio stream socket (a :class:`~relay.transports.MediaConnection`)."""

    connection_types: tuple[str, ...] = ("plivo",)

    def __init__(self, ws: web.WebSocketResponse, controls: ControlLookup | None = None) -> None:
        self._ws = ws
        self._controls = controls
        self._line: PlivoLine | None = None
        self._start: pp.Start | None = None

    async def handshake(self) -> Handshake | None:
        try:
            self._start = await _wait_for_start(self._ws)
        except StartRefused as exc:
            await self.refuse(str(exc))
            return None
        if self._start is None:
            await self.refuse("no start event")
            return None
        return Handshake(
            token=self._start.extra_headers.get("token"),
            carrier_call_id=self._start.call_id or None,
        )

    async def refuse(self, why: str) -> None:
        log.info("media_socket_refused", transport="plivo", reason=why)
        await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why.encode()[:120])

    async def accept(self, call_id: str, note: Note) -> PlivoLine:
        assert self._start is not None, "accept() follows a handshake"
        control = await self._controls(call_id) if self._controls is not None else None
        self._line = PlivoLine(self._ws, self._start.stream_id, note, self._start.call_id, control)
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
                    event = pp.parse(msg.data)
                except pp.ProtocolError as exc:
                    await bad_frame(str(exc), msg.data)
                    continue
                if isinstance(event, pp.Media):
                    handle.push_audio(ulaw_decode(event.payload), RATE)
                elif isinstance(event, pp.Dtmf):
                    handle.push_dtmf(event.digit)
                elif isinstance(event, pp.Stop):
                    log.info("carrier_stop", call_id=call_id)
                    return
            elif msg.type == WSMsgType.BINARY:
                await bad_frame("binary frame (Plivo stream frames are JSON text)", msg.data)
        log.info("carrier_socket_closed", call_id=call_id)


__all__ = ["PlivoConnection", "PlivoLine"]
