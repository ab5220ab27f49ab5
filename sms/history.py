"""``recentHistory`` across channels: the texts of a conversation AND the transcripts of the
calls between the same two numbers, merged in time order, each entry naming its channel."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.models import Call, Message, TranscriptSegment
from sms.outbound import iso
from sms.store import table_of

HISTORY_LIMIT = 20
# No text has a seq this high (an INTEGER column): "before it" is every text.
NO_SEQ_LIMIT = 2**31 - 1

# Built once, on the Core tables, values as parameters (see sms.store).
_messages, _calls, _segments = table_of(Message), table_of(Call), table_of(TranscriptSegment)
_TEXTS = (
    select(_messages.c.direction, _messages.c.text, _messages.c.created_at, _messages.c.seq)
    .where(
        _messages.c.conversation_id == bindparam("b_conversation_id"),
        _messages.c.seq < bindparam("b_before_seq"),
    )
    .order_by(_messages.c.seq.desc())
    .limit(bindparam("b_limit", type_=Integer))
)
_SPOKEN = (
    select(
        _segments.c.speaker,
        _segments.c.text,
        _segments.c.interrupted,
        _segments.c.start_ms,
        _segments.c.seq,
        _calls.c.started_at,
        _calls.c.created_at,
    )
    .join(_calls, _calls.c.id == _segments.c.call_id)
    .where(
        _calls.c.project_id == bindparam("b_project_id"),
        or_(
            and_(
                _calls.c.from_number == bindparam("b_their_number"),
                _calls.c.to_number == bindparam("b_our_number"),
            ),
            and_(
                _calls.c.from_number == bindparam("b_our_number"),
                _calls.c.to_number == bindparam("b_their_number"),
            ),
        ),
        or_(_segments.c.speaker == "user", _segments.c.speaker == "agent"),
    )
    .order_by(_calls.c.created_at.desc(), _segments.c.seq.desc())
    .limit(bindparam("b_limit", type_=Integer))
)


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
    params = {
        "b_conversation_id": conversation_id,
        "b_before_seq": NO_SEQ_LIMIT if before_seq is None else before_seq,
        "b_project_id": project_id,
        "b_our_number": our_number,
        "b_their_number": their_number,
        "b_limit": limit,
    }
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
        for direction, text, at, seq in await session.execute(_TEXTS, params)
    ]
    for speaker, text, interrupted, start_ms, seq, started, created in await session.execute(
        _SPOKEN, params
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
