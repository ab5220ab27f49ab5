"""The phone's side of a Telnyx media socket (:mod:`relay.handset.fake_telnyx` opens it):
Telnyx's frames, numbered, with the handset's pacing and listening."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import aiohttp

from relay.handset.voice import MediaLine


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class TelnyxLine(MediaLine):
    """The phone's side of a Telnyx media socket: Telnyx's frames, numbered."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, stream_id: str, ccid: str) -> None:
        super().__init__(ws, stream_id)
        self.ccid = ccid
        self.seq = 1  # the start frame was 1
        self.started = time.monotonic()

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def media_frame(self, data: bytes) -> str:
        seq = self._next()
        media = {
            "track": "inbound",
            "chunk": seq,
            "timestamp": str(int((time.monotonic() - self.started) * 1000)),
            "payload": base64.b64encode(data).decode(),
        }
        frame = {"event": "media", "sequence_number": seq, "media": media, "stream_id": self.sid}
        return json.dumps(frame)

    def dtmf_frame(self, digit: str) -> str:
        frame = {
            "event": "dtmf",
            "stream_id": self.sid,
            "occurred_at": now_iso(),
            "sequence_number": self._next(),
            "dtmf": {"digit": digit},
        }
        return json.dumps(frame)

    def mark_frame(self, name: str) -> str:
        frame = {
            "event": "mark",
            "sequence_number": self._next(),
            "stream_id": self.sid,
            "mark": {"name": name},
        }
        return json.dumps(frame)

    def stop_frame(self) -> str:
        stop = {"user_id": "fake-user", "call_control_id": self.ccid}
        frame = {"event": "stop", "sequence_number": self._next(), "stop": stop}
        return json.dumps({**frame, "stream_id": self.sid})


__all__ = ["TelnyxLine", "now_iso"]
