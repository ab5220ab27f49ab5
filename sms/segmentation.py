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
# What one reply to a text may send: 3 messages of up to 10 segments (30 segments, about
# 4,500 GSM-7 characters). A webhook's text past it is cut, never sent as 200 texts.
MAX_REPLY_MESSAGES = 3
MAX_REPLY_SEGMENTS = MAX_REPLY_MESSAGES * MAX_SEGMENTS
# The most characters MAX_REPLY_MESSAGES can carry: text past it is not even looked at.
MAX_REPLY_CHARS = MAX_REPLY_SEGMENTS * PER_PART["gsm7"]


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
    limit = PER_PART[encoding]
    if not doubled:  # a unit a character: equal slices, no walk in Python
        return Segments(
            encoding, total, tuple(text[i : i + limit] for i in range(0, len(text), limit))
        )
    sizes = [_units(c, encoding) for c in text]
    parts: list[str] = []
    start = used = 0
    for i, size in enumerate(sizes):
        if used + size > limit:  # a 2-unit character goes whole to the next part
            parts.append(text[start:i])
            start, used = i, 0
        used += size
    parts.append(text[start:])
    return Segments(encoding, total, tuple(parts))


def split_messages(
    text: str, max_segments: int = MAX_SEGMENTS, max_messages: int | None = None
) -> list[str]:
    """Cut a text too long for one message into messages of at most ``max_segments`` each,
    at a space where one is near the limit (each message arrives on its own); with
    ``max_messages``, stop after that many (the rest of the text is not looked at).

    Linear in the text: each message is found in a window of the most characters it can
    hold, never by measuring all the text that is left."""
    widest = max(SINGLE["gsm7"], PER_PART["gsm7"] * max_segments)  # GSM-7: a unit a char
    out: list[str] = []
    start = 0
    while max_messages is None or len(out) < max_messages:
        window = text[start : start + widest + 1]
        if len(window) <= widest and segment(window).count <= max_segments:
            if window or not out:
                out.append(window)
            break
        cut = _fit(window, max_segments)
        space = window.rfind(" ", 0, cut)
        if space > cut * 0.8:
            cut = space
        out.append(window[:cut].rstrip())
        start += cut
        while start < len(text) and text[start].isspace():
            start += 1
    return out


def _fit(window: str, max_segments: int) -> int:
    """How many characters from the start of ``window`` fit in ``max_segments``: those of its
    first parts (a carrier fills parts greedily, so a prefix never needs more)."""
    return sum(map(len, segment(window).parts[:max_segments]))


__all__ = [
    "MAX_REPLY_CHARS",
    "MAX_REPLY_MESSAGES",
    "MAX_REPLY_SEGMENTS",
    "MAX_SEGMENTS",
    "Encoding",
    "Segments",
    "encoding_of",
    "segment",
    "split_messages",
]
