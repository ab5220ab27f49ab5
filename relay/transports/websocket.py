"""The raw websocket transport, for developers who bring their own telephony.

Binary frames carry 16-bit little-endian mono PCM at the call's sample rate, both ways.
Text frames carry a small JSON control protocol (README, "Raw websocket protocol"):

    in   {"type": "dtmf", "digit": "5"}       a key the caller pressed
         {"type": "stop"}                     the caller hung up
    out  {"type": "connected", "callId": ..., "sampleRate": 16000}    first frame
         {"type": "clear"}                    drop audio you have buffered (barge-in)
         {"type": "dtmf", "digits": "12#"}    play these keys to the caller
         {"type": "transfer", "to": "+1..."}  connect the caller to this number
         {"type": "hangup"}                   the call is over; the relay then closes
         {"type": "error", "code": ..., "message": ...}   a frame of yours was dropped
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from relay.engine.ports import PCM, CallHandle
from relay.logs import get_logger
from relay.transports import BadFrame, Handshake, Note

log = get_logger("relay.transports.websocket")

DTMF_DIGITS = "0123456789*#ABCD"
ODD_LENGTH = "A PCM16 frame needs an even number of bytes."
NOT_JSON = "A text frame must be a JSON object."
BAD_DIGIT = "digit must be one of 0-9 * # A-D."


class WebsocketLine:
    """The engine's way back to a raw websocket caller."""

    def __init__(self, ws: web.WebSocketResponse, sample_rate: int) -> None:
        self._ws = ws
        self.sample_rate = sample_rate

    async def _control(self, message: dict[str, Any]) -> None:
        if not self._ws.closed:
            await self._ws.send_str(json.dumps(message))

    async def send_audio(self, pcm: PCM) -> None:
        if not self._ws.closed:
            await self._ws.send_bytes(pcm.astype("<i2", copy=False).tobytes())

    async def clear(self) -> None:
        await self._control({"type": "clear"})

    async def send_dtmf(self, digits: str) -> None:
        await self._control({"type": "dtmf", "digits": digits})

    async def transfer(self, to: str) -> None:
        await self._control({"type": "transfer", "to": to})

    async def hangup(self) -> None:
        if not self._ws.closed:
            await self._control({"type": "hangup"})
            await self._ws.close()


class WebsocketConnection:
    """A raw PCM socket whose media token was checked before the upgrade (a
    :class:`~relay.transports.MediaConnection`)."""

    connection_types: tuple[str, ...] = ("websocket",)

    def __init__(self, ws: web.WebSocketResponse, sample_rate: int) -> None:
        self._ws = ws
        self.sample_rate = sample_rate

    async def handshake(self) -> Handshake:
        return Handshake()

    async def refuse(self, why: str) -> None:
        await self._ws.close(code=1008, message=why.encode()[:120])

    async def accept(self, call_id: str, note: Note) -> WebsocketLine:
        await self._ws.send_str(
            json.dumps({"type": "connected", "callId": call_id, "sampleRate": self.sample_rate})
        )
        return WebsocketLine(self._ws, self.sample_rate)

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        ws = self._ws

        async def error(code: str, message: str, frame: str | bytes) -> None:
            await bad_frame(message, frame)
            if not ws.closed:
                await ws.send_str(json.dumps({"type": "error", "code": code, "message": message}))

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if len(msg.data) % 2:
                    await error("odd_length_audio", ODD_LENGTH, msg.data)
                    continue
                handle.push_audio(np.frombuffer(msg.data, dtype="<i2"), self.sample_rate)
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                except ValueError:
                    await error("malformed_json", NOT_JSON, msg.data)
                    continue
                kind = control.get("type") if isinstance(control, dict) else None
                if kind == "stop":
                    return
                if kind == "dtmf":
                    digit = control.get("digit")
                    if isinstance(digit, str) and len(digit) == 1 and digit in DTMF_DIGITS:
                        handle.push_dtmf(digit)
                    else:
                        await error("invalid_dtmf", BAD_DIGIT, msg.data)
                else:
                    await error("unknown_type", f"Unknown message type {kind!r}.", msg.data)
