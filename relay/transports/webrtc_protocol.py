"""The WebRTC transport's wire format: the WHIP offer it accepts and the live events it sends.

Signalling is WHIP (RFC 9725): the page POSTs one SDP offer (``application/sdp``, ICE
candidates gathered first: no trickle) and gets the SDP answer. The offer must carry an
audio section the relay can speak Opus on; a data channel (label ``relay``) is optional,
and carries the call's live events to the page as JSON text:

    {"type": "transcript", "role": "user" | "agent", "text": "...", "final": true}
                       (``final: false``: the agent's words as their audio starts playing)
    {"type": "agent_state", "state": "listening" | "thinking" | "speaking"}
    {"type": "ended", "status": "completed" | "failed", "reason": null | "..."}

    SdpRefused            the offer cannot start a call; ``code`` is stable
    ├── code "invalid_sdp"        not an SDP offer (or too large, or not UTF-8)
    └── code "no_audio"           no audio section, or no codec in common (Opus is required)
"""

from __future__ import annotations

import json
from typing import Any

SDP_CONTENT_TYPE = "application/sdp"
MAX_SDP_BYTES = 64 * 1024  # a browser's offer with every candidate is under 10 KiB
EVENTS_LABEL = "relay"
RATE = 48000  # Opus in WebRTC is 48 kHz, both ways
FRAME_SAMPLES = RATE // 50  # 20 ms

NOT_SDP = "The body must be an SDP offer (RFC 8866) starting with 'v=0'."
TOO_LARGE = f"The SDP offer is larger than {MAX_SDP_BYTES} bytes."
NOT_UTF8 = "The SDP offer must be UTF-8 text."
NO_AUDIO = "The SDP offer has no audio section the relay can answer (Opus 48 kHz is required)."
NOT_ACCEPTED = "The SDP offer could not be accepted: {why}."


class SdpRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_offer(body: bytes) -> str:
    """The offer's text, checked for what a WHIP offer must be before any WebRTC work."""
    if len(body) > MAX_SDP_BYTES:
        raise SdpRefused("invalid_sdp", TOO_LARGE)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpRefused("invalid_sdp", NOT_UTF8) from exc
    if "\x00" in text or not text.lstrip().startswith("v=0"):
        raise SdpRefused("invalid_sdp", NOT_SDP)
    lines = [line.strip() for line in text.splitlines()]
    if not any(line.startswith("m=audio ") for line in lines):
        raise SdpRefused("no_audio", NO_AUDIO)
    if not any(
        line.lower().startswith("a=rtpmap:") and "opus/48000" in line.lower() for line in lines
    ):
        raise SdpRefused("no_audio", NO_AUDIO)
    # A line ending other than CRLF is tolerated by browsers and by aiortc's parser alike.
    return "\r\n".join(lines).strip() + "\r\n"


def event_text(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
