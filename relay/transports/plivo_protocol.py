"""Plivo audio stream wire format: JSON text frames over a websocket, mu-law 8 kHz audio.

In (carrier -> relay): ``start`` (once: callId, streamId, mediaFormat, and the
``extra_headers`` the answer XML asked for), ``media``, ``dtmf``, ``playedStream`` (a
checkpoint's audio has played), ``clearedAudio``, and on some versions ``stop`` (the socket
closing is the authoritative end).
Out (relay -> carrier): ``playAudio``, ``checkpoint``, ``clearAudio``.
https://www.plivo.com/docs/voice/xml/the-stream-element (stream events and commands)
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "audio/x-mulaw"
RATE = 8000
DTMF_DIGITS = "0123456789*#ABCD"


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: str
    call_id: str
    extra_headers: dict[str, str] = field(default_factory=dict)
    encoding: str = CONTENT_TYPE
    sample_rate: int = RATE


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class PlayedStream:
    name: str


@dataclass(frozen=True, slots=True)
class ClearedAudio:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Event = Start | Media | Dtmf | PlayedStream | ClearedAudio | Stop


def _obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object")
    return value


def _headers(raw: Any) -> dict[str, str]:
    """``extra_headers``: Plivo sends the pairs as a JSON object, or a JSON string of one."""
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError("extra_headers is not JSON") from exc
    if raw is None:
        return {}
    return {str(k): str(v) for k, v in _obj(raw, "extra_headers").items()}


def parse(text: str | bytes) -> Event:
    """One websocket text frame to an event; :class:`ProtocolError` for anything malformed."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("frame is not JSON") from exc
    msg = _obj(msg, "frame")
    kind = msg.get("event")
    if kind == "start":
        start = _obj(msg.get("start"), "start")
        fmt = _obj(start.get("mediaFormat") or {}, "mediaFormat")
        stream_id = start.get("streamId") or msg.get("streamId")
        if not isinstance(stream_id, str) or not stream_id:
            raise ProtocolError("start needs a streamId")
        rate = fmt.get("sampleRate", RATE)
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 0 < rate <= 192_000:
            raise ProtocolError("start's mediaFormat.sampleRate must be a sample rate")
        return Start(
            stream_id=stream_id,
            call_id=str(start.get("callId", "")),
            extra_headers=_headers(msg.get("extra_headers", start.get("extra_headers"))),
            encoding=str(fmt.get("encoding", CONTENT_TYPE)),
            sample_rate=rate,
        )
    if kind == "media":
        media = _obj(msg.get("media"), "media")
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ProtocolError("media payload is not base64") from exc
        return Media(payload)
    if kind == "dtmf":
        digit = _obj(msg.get("dtmf"), "dtmf").get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ProtocolError("dtmf digit must be one of 0-9 * # A-D")
        return Dtmf(digit)
    if kind == "playedStream":
        name = msg.get("name")
        if not isinstance(name, str):
            raise ProtocolError("playedStream needs a name")
        return PlayedStream(name)
    if kind == "clearedAudio":
        return ClearedAudio()
    if kind == "stop":
        return Stop()
    raise ProtocolError(f"unknown event {kind!r}")


def play_audio(stream_id: str, payload: bytes) -> str:
    media = {
        "contentType": CONTENT_TYPE,
        "sampleRate": RATE,
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "playAudio", "streamId": stream_id, "media": media})


def checkpoint(stream_id: str, name: str) -> str:
    return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


def clear_audio(stream_id: str) -> str:
    return json.dumps({"event": "clearAudio", "streamId": stream_id})


__all__ = [
    "CONTENT_TYPE",
    "ClearedAudio",
    "Dtmf",
    "Event",
    "Media",
    "PlayedStream",
    "ProtocolError",
    "Start",
    "Stop",
    "checkpoint",
    "clear_audio",
    "parse",
    "play_audio",
]
