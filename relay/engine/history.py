"""What a call has said so far, two ways: the ``recentHistory`` each turn sends, and the
transcript the call keeps (segments timed from the start of the call)."""

from __future__ import annotations

from typing import Any

from relay.engine.ports import CallSink, Segment
from relay.timefmt import iso
from relay.turns import HISTORY_LIMIT


class History:
    def __init__(self, sink: CallSink, started_at: float) -> None:
        self.sink = sink
        self.started_at = started_at  # wall clock (time.time()) of the call's start
        self.entries: list[dict[str, Any]] = []
        self._seq = 0

    def remember(
        self,
        role: str,
        text: str,
        *,
        interrupted: bool = False,
        dtmf: bool = False,
        item_id: str | None = None,
        at: float | None = None,
    ) -> None:
        """An entry of ``recentHistory``; ``item_id`` names the livekit item it came from,
        so the turn it starts can leave it out of its own history."""
        entry: dict[str, Any] = {"role": role, "content": text, "channel": "voice", "at": iso(at)}
        if interrupted:
            entry["interrupted"] = True
        if dtmf:
            entry["dtmf"] = True
        if item_id:
            entry["_id"] = item_id
        self.entries.append(entry)
        if len(self.entries) > HISTORY_LIMIT * 2:
            del self.entries[:HISTORY_LIMIT]

    def recent(self, exclude: set[str]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in entry.items() if k != "_id"}
            for entry in self.entries
            if entry.get("_id") not in exclude
        ]

    def segment(
        self,
        speaker: str,
        text: str,
        start_ms: int,
        end_ms: int,
        interrupted: bool = False,
        data: dict[str, Any] | None = None,
    ) -> None:
        """A transcript line, stored through the call's sink."""
        self._seq += 1
        end_ms = max(start_ms, end_ms)
        self.sink.segment(Segment(self._seq, speaker, text, start_ms, end_ms, interrupted, data))

    def ms(self, wall: float) -> int:
        """A wall-clock time as milliseconds into the call."""
        return max(0, int((wall - self.started_at) * 1000))
