"""The receive buffer for a web call's audio: each RTP packet handed on the moment it is the
next in sequence.

aiortc's own buffer is built for video, whose frames span several packets: it hands a frame
on only once a packet of the next frame shows the frame complete. For Opus at 20 ms, where one
packet is one whole frame, that is every frame 20 ms late, and the caller's last word reaches
the endpointing 20 ms late. Here a packet that is the next expected goes to the decoder at
once; packets that overtook a missing one wait for it until ``hold`` of them wait, and then it
counts as lost (after a reorder the buffer stays one packet behind, as aiortc's always is); a
late or repeated packet is dropped, and a jump far back (a sender that started its sequence
again) starts over.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

# A missing packet is given up once this many that came after it wait (60 ms of audio).
HOLD_PACKETS = 3
# A packet this far behind is a new sequence, not a late packet (aiortc uses the same).
RESTART_BEHIND = 100


class AudioJitterBuffer:
    """The interface aiortc's receiver uses (``add`` returns whether to ask for a key frame,
    never for audio, and the frame to decode, if any)."""

    def __init__(self, hold: int = HOLD_PACKETS) -> None:
        self.hold = hold
        self._next: int | None = None
        self._held: dict[int, RtpPacket] = {}

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = uint16_add(seq, -self._next)
        if ahead >= 0x8000:  # behind what was handed on already
            if 0x10000 - ahead < RESTART_BEHIND:
                return False, None  # late, or a repeat: its moment has passed
            self._held.clear()
            self._next = seq
        self._held[seq] = packet
        if self._next not in self._held and len(self._held) >= self.hold:
            nxt = self._next
            self._next = min(self._held, key=lambda s: uint16_add(s, -nxt))  # skip the lost
        found = self._held.pop(self._next, None)
        if found is None:
            return False, None
        self._next = uint16_add(self._next, 1)
        data: bytes = getattr(found, "_data", b"")  # the receiver's depayloaded payload
        return False, JitterFrame(data=data, timestamp=found.timestamp)


__all__ = ["AudioJitterBuffer"]
