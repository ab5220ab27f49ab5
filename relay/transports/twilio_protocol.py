"""Twilio Media Streams wire format: JSON text frames over a websocket, mu-law 8 kHz audio.

In (carrier -> relay): ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``.
Out (relay -> carrier): ``media``, ``mark``, ``clear``.
The sim handset (``relay phone``) speaks the carrier side of this same protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Event = Connected | Start | Media | Dtmf | Mark | Stop


def _obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object")
    return value


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
        start = _obj(msg.get("start"), "start")
        fmt = start.get("mediaFormat") or {}
        params = start.get("customParameters") or {}
        stream_sid = start.get("streamSid") or msg.get("streamSid")
        if not isinstance(stream_sid, str) or not isinstance(params, dict):
            raise ProtocolError("start needs a streamSid")
        rate = _obj(fmt, "mediaFormat").get("sampleRate", 8000)
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 0 < rate <= 192_000:
            raise ProtocolError("start's mediaFormat.sampleRate must be a sample rate")
        return Start(
            stream_sid=stream_sid,
            call_sid=str(start.get("callSid", "")),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            encoding=str(fmt.get("encoding", "audio/x-mulaw")),
            sample_rate=rate,
        )
    if kind == "media":
        media = _obj(msg.get("media"), "media")
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ProtocolError("media payload is not base64") from exc
        ts = media.get("timestamp")
        return Media(payload, int(ts) if isinstance(ts, str | int) and str(ts).isdigit() else None)
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
    if kind == "stop":
        return Stop()
    raise ProtocolError(f"unknown event {kind!r}")


def media(stream_sid: str, payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": base64.b64encode(payload).decode()},
        }
    )


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
