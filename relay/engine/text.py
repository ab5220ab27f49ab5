"""Text to speak, cut where speech may start: at a sentence end, or when the stream pauses.

livekit's default sentence tokenizer holds a finished sentence until more text (or the end)
arrives; a webhook that streams one sentence and then thinks would leave the caller in
silence. Here a segment is released the moment its sentence ends, and a fragment without a
sentence end is released once the stream has been quiet for ``pause`` seconds. The first
segment of a reply may be cut once more, after its first clause, so the caller hears the
answer start while the rest is synthesized; segments with nothing to say are not spoken.
A ``play`` clip's mark (:data:`~relay.turns.PLAY_MARK`) is always a segment of its own.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator

from relay.turns import PLAY_MARK

SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?:\s+|$)")
MAX_SEGMENT = 240  # a run-on sentence is cut at a comma or space near here
CLAUSE_END = re.compile(r"[,;:]\s+")


def speakable(text: str) -> bool:
    """Whether there is anything to say in ``text``: a segment of punctuation alone (".",
    "...") gives a TTS no audio, which livekit takes for a failed synthesis and retries."""
    return any(ch.isalnum() for ch in text)


def join_chunk(previous: str, text: str) -> str:
    """How a new chunk continues the text so far (chunks may be sentence fragments)."""
    if previous and text and not previous[-1].isspace() and not text[0].isspace():
        if previous[-1] in ".!?,;:…" and text[0].isalnum():
            return " " + text
    return text


def split_ready(buffer: str) -> tuple[list[str], str]:
    """Finished sentences at the front of ``buffer``, and the unfinished rest. A clip's
    :data:`PLAY_MARK` is a segment of its own, and ends the text before it."""
    out: list[str] = []
    while PLAY_MARK in buffer:
        before, _, buffer = buffer.partition(PLAY_MARK)
        ready, rest = _sentences(before)
        out += [*ready, rest, PLAY_MARK] if rest else [*ready, PLAY_MARK]
    ready, rest = _sentences(buffer)
    return out + ready, rest


def _sentences(buffer: str) -> tuple[list[str], str]:
    out: list[str] = []
    start = 0
    for match in SENTENCE_END.finditer(buffer):
        out.append(buffer[start : match.end()])
        start = match.end()
    rest = buffer[start:]
    while len(rest) > MAX_SEGMENT:
        cut = max(rest.rfind(", ", 0, MAX_SEGMENT), rest.rfind(" ", 0, MAX_SEGMENT))
        cut = cut + 1 if cut > 0 else MAX_SEGMENT
        out.append(rest[:cut])
        rest = rest[cut:]
    return out, rest


def first_clause(segment: str) -> list[str]:
    """``segment`` cut after its first clause ("Sure, " + "I can help with that."), when
    at least two words follow: a TTS says the short piece first and the caller hears the
    answer begin while the rest is synthesized."""
    match = CLAUSE_END.search(segment)
    if match is None or len(segment[match.end() :].split()) < 2:
        return [segment]
    return [segment[: match.end()], segment[match.end() :]]


async def segments(
    text: AsyncIterable[str], *, pause: float, quick_start: bool = False
) -> AsyncIterator[str]:
    """Yield speakable segments of ``text`` as early as the rules above allow; with
    ``quick_start``, the first one is cut after its first clause."""
    async for segment in _segments(text, pause=pause):
        if quick_start:
            quick_start = False
            for piece in first_clause(segment):
                yield piece
        else:
            yield segment


async def _segments(text: AsyncIterable[str], *, pause: float) -> AsyncIterator[str]:
    source = aiter(text)
    buffer = ""
    pending: asyncio.Task[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            timeout = pause if buffer.strip() else None
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:  # the stream paused with a fragment waiting
                yield buffer
                buffer = ""
                continue
            task, pending = pending, None
            try:
                piece = task.result()
            except StopAsyncIteration:
                break
            buffer += piece
            ready, buffer = split_ready(buffer)
            for sentence in ready:
                if sentence.strip():
                    yield sentence
        if buffer.strip():
            yield buffer
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
