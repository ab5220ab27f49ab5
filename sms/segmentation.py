"""How a text travels as SMS: its encoding and the segments a carrier splits it into.

A text made only of GSM 03.38 characters goes as GSM-7: 160 characters in one SMS, 153 per
segment when it is longer (the concatenation header takes the other 7). The extension
characters (``^{}[]~|\\€`` and form feed) are sent as an escape plus a character, so they
count 2 and never straddle two segments. Any other character switches the whole text to
UCS-2: 70 UTF-16 code units in one SMS, 67 per segment; characters outside the Basic
Multilingual Plane (most emoji) take 2 units, and a surrogate pair is never split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["gsm7", "ucs2"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

SINGLE = {"gsm7": 160, "ucs2": 70}
PER_PART = {"gsm7": 153, "ucs2": 67}
# What one outgoing message may hold: carriers (Twilio: 1,600 characters) refuse more, and
# phones reassemble at most about ten parts reliably. Longer replies go as several messages.
MAX_SEGMENTS = 10


@dataclass(frozen=True, slots=True)
class Segments:
    """``parts`` are the texts of the SMS the carrier sends; ``units`` counts septets
    (GSM-7) or UTF-16 code units (UCS-2) of the whole text."""

    encoding: Encoding
    units: int
    parts: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.parts)


GSM7 = GSM7_BASIC | GSM7_EXTENSION


def encoding_of(text: str) -> Encoding:
    return "gsm7" if GSM7.issuperset(text) else "ucs2"


def _units(char: str, encoding: Encoding) -> int:
    if encoding == "gsm7":
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1


def segment(text: str) -> Segments:
    """Split ``text`` exactly as a carrier would."""
    encoding = encoding_of(text)
    if encoding == "gsm7":
        doubled = (
            sum(1 for c in text if c in GSM7_EXTENSION) if not GSM7_BASIC.issuperset(text) else 0
        )
    else:
        doubled = sum(1 for c in text if ord(c) > 0xFFFF) if not text.isascii() else 0
    total = len(text) + doubled
    if total <= SINGLE[encoding]:
        return Segments(encoding, total, (text,))
    sizes = [_units(c, encoding) for c in text]
    limit = PER_PART[encoding]
    parts: list[str] = []
    start = used = 0
    for i, size in enumerate(sizes):
        if used + size > limit:  # a 2-unit character goes whole to the next part
            parts.append(text[start:i])
            start, used = i, 0
        used += size
    parts.append(text[start:])
    return Segments(encoding, total, tuple(parts))


def split_messages(text: str, max_segments: int = MAX_SEGMENTS) -> list[str]:
    """Cut a text too long for one message into messages of at most ``max_segments`` each,
    at a space where one is near the limit (each message arrives on its own)."""
    out: list[str] = []
    rest = text
    while segment(rest).count > max_segments:
        encoding = encoding_of(rest)
        capacity = PER_PART[encoding] * max_segments
        used = cut = 0
        for i, char in enumerate(rest):
            used += _units(char, encoding)
            if used > capacity:
                break
            cut = i + 1
        while segment(rest[:cut]).count > max_segments:  # escapes can waste a unit a part
            cut -= 1
        space = rest.rfind(" ", 0, cut)
        if space > cut * 0.8:
            cut = space
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not out:
        out.append(rest)
    return out


__all__ = ["MAX_SEGMENTS", "Encoding", "Segments", "encoding_of", "segment", "split_messages"]
