"""``recentHistory`` across channels: the texts of a conversation AND the transcripts of the
calls between the same two numbers, merged in time order, each entry naming its channel."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.models import Call, Message, TranscriptSegment
from sms.outbound import iso

HISTORY_LIMIT = 20


async def recent_history(
    session: AsyncSession,
    *,
    project_id: str,
    conversation_id: str,
    our_number: str,
    their_number: str,
    before: datetime | None = None,
    before_seq: int | None = None,
    limit: int = HISTORY_LIMIT,
) -> list[dict[str, Any]]:
    """The last ``limit`` entries, oldest first; only what happened before ``before``
    (texts: before ``before_seq``), so the text being answered is not part of it."""
    texts = (
        select(Message.direction, Message.text, Message.created_at, Message.seq)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.seq.desc())
        .limit(limit)
    )
    if before_seq is not None:
        texts = texts.where(Message.seq < before_seq)
    entries: list[tuple[datetime, int, dict[str, Any]]] = [
        (
            at,
            seq,
            {
                "role": "user" if direction == "inbound" else "agent",
                "content": text,
                "channel": "sms",
                "at": iso(at),
            },
        )
        for direction, text, at, seq in await session.execute(texts)
    ]
    spoken = (
        select(
            TranscriptSegment.speaker,
            TranscriptSegment.text,
            TranscriptSegment.interrupted,
            TranscriptSegment.start_ms,
            TranscriptSegment.seq,
            Call.started_at,
            Call.created_at,
        )
        .join(Call, Call.id == TranscriptSegment.call_id)
        .where(
            Call.project_id == project_id,
            or_(
                and_(Call.from_number == their_number, Call.to_number == our_number),
                and_(Call.from_number == our_number, Call.to_number == their_number),
            ),
            TranscriptSegment.speaker.in_(("user", "agent")),
        )
        .order_by(Call.created_at.desc(), TranscriptSegment.seq.desc())
        .limit(limit)
    )
    for speaker, text, interrupted, start_ms, seq, started, created in await session.execute(
        spoken
    ):
        at = (started or created) + timedelta(milliseconds=start_ms)
        if before is not None and at > before:
            continue
        entry: dict[str, Any] = {"role": speaker, "content": text, "channel": "voice"}
        if interrupted:
            entry["interrupted"] = True
        entry["at"] = iso(at)
        entries.append((at, seq, entry))
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries[-limit:]]
