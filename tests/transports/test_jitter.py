"""The relay's receive buffer for web-call audio (relay.transports.jitter), packet by packet."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from relay.transports.jitter import AudioJitterBuffer


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 0x10000, timestamp=seq * 960)
    p._data = f"opus-{seq}".encode()  # what aiortc's receiver puts there before add()
    return p


def feed(buffer: AudioJitterBuffer, seqs: list[int]) -> list[str | None]:
    out = []
    for seq in seqs:
        pli, frame = buffer.add(packet(seq))
        assert pli is False
        out.append(None if frame is None else frame.data.decode())
    return out


def test_a_packet_in_sequence_is_handed_on_at_once():
    """aiortc's own buffer hands packet n on only when n + 1 arrives."""
    assert feed(AudioJitterBuffer(), [7, 8, 9]) == ["opus-7", "opus-8", "opus-9"]


def test_a_packet_that_overtook_another_waits_for_it():
    out = feed(AudioJitterBuffer(), [1, 3, 2, 4])
    assert out == ["opus-1", None, "opus-2", "opus-3"]  # then one packet behind, as aiortc's


def test_a_missing_packet_is_given_up_after_the_hold():
    out = feed(AudioJitterBuffer(hold=3), [1, 3, 4, 5, 6])
    assert out == ["opus-1", None, None, "opus-3", "opus-4"]


def test_late_and_repeated_packets_are_dropped():
    assert feed(AudioJitterBuffer(), [1, 2, 2, 1, 3]) == ["opus-1", "opus-2", None, None, "opus-3"]


def test_the_sequence_wraps_around():
    assert feed(AudioJitterBuffer(), [0xFFFE, 0xFFFF, 0x10000, 0x10001]) == [
        "opus-65534",
        "opus-65535",
        "opus-65536",
        "opus-65537",
    ]


def test_a_sequence_started_again_far_back_is_followed():
    out = feed(AudioJitterBuffer(), [5000, 5001, 10, 11])
    assert out == ["opus-5000", "opus-5001", "opus-10", "opus-11"]
