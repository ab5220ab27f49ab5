"""Telnyx media streaming wire format: JSON text frames over a websocket, PCMU 8 kHz.

In (Telnyx -> relay): ``connected``, ``start`` (``stream_id``, ``start.call_control_id``,
``start.media_format``), ``media`` (``media.payload``: base64 RTP payload), ``dtmf``,
``mark`` (a mark we sent has played), ``error``, ``stop``.
Out (relay -> Telnyx): ``media`` (``media.payload``, 20 ms to 30 s of audio), ``mark``,
``clear`` (drop what is queued to play: barge-in).
https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: str
    call_control_id: str
    encoding: str = "PCMU"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes
    track: str = "inbound"


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Event = Connected | Start | Media | Dtmf | Mark | Error | Stop


def _obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object")
    return value


def _start(msg: dict[str, Any]) -> Start:
    start = _obj(msg.get("start"), "start")
    fmt = _obj(start.get("media_format") or {}, "media_format")
    stream_id = msg.get("stream_id")
    if not isinstance(stream_id, str) or not stream_id:
        raise ProtocolError("start needs a stream_id")
    rate = fmt.get("sample_rate", 8000)
    if isinstance(rate, str) and rate.isdigit():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 0 < rate <= 192_000:
        raise ProtocolError("start's media_format.sample_rate must be a sample rate")
    return Start(
        stream_id=stream_id,
        call_control_id=str(start.get("call_control_id") or ""),
        encoding=str(fmt.get("encoding") or "PCMU"),
        sample_rate=rate,
    )


def parse(text: str | bytes) -> Event:
    """One websocket text frame to an event; :class:`ProtocolError` for anything malformed."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("frame is not JSON") from exc
    msg = _obj(msg, "frame")
    kind = msg.get("event")
    if kind == "connected":
        return Connected()
    if kind == "start":
        return _start(msg)
    if kind == "media":
        media = _obj(msg.get("media"), "media")
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ProtocolError("media payload is not base64") from exc
        return Media(payload, str(media.get("track") or "inbound"))
    if kind == "dtmf":
        digit = _obj(msg.get("dtmf"), "dtmf").get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ProtocolError("dtmf digit must be one of 0-9 * # A-D")
        return Dtmf(digit)
    if kind == "mark":
        name = _obj(msg.get("mark"), "mark").get("name")
        if not isinstance(name, str):
            raise ProtocolError("mark needs a name")
        return Mark(name)
    if kind == "error":
        info = _obj(msg.get("payload") or {}, "payload")
        return Error(str(info.get("code") or ""), str(info.get("detail") or "")[:200])
    if kind == "stop":
        return Stop()
    raise ProtocolError(f"unknown event {kind!r}")


def media(payload: bytes) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "mark": {"name": name}})


def clear() -> str:
    return json.dumps({"event": "clear"})


__all__ = [
    "Connected",
    "Dtmf",
    "Error",
    "Event",
    "Mark",
    "Media",
    "ProtocolError",
    "Start",
    "Stop",
    "clear",
    "mark",
    "media",
    "parse",
]
