"""A call's transcript as text: one line per segment, ``Caller: ...``, ``Agent: ...``. The API,
``transcript.ready`` and post-call analysis all read it this way."""

from __future__ import annotations

from collections.abc import Iterable

from relay.store.models import TranscriptSegment

SPEAKERS = {"user": "Caller", "agent": "Agent", "dtmf": "Caller (keypad)", "tool": "Tool"}


def transcript_text(segments: Iterable[TranscriptSegment]) -> str:
    lines = []
    for seg in segments:
        who = SPEAKERS.get(seg.speaker, seg.speaker.capitalize())
        lines.append(f"{who}: {seg.text}" + (" [interrupted]" if seg.interrupted else ""))
    return "\n".join(lines)


__all__ = ["SPEAKERS", "transcript_text"]
