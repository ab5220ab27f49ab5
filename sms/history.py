"""``recentHistory`` across channels: the texts of a conversation AND the transcripts of the
calls between the same two numbers, merged in time order, each entry naming its channel.

On SQLite what the calls' query found for a pair of numbers is kept while neither ``calls``
nor ``transcript_segments`` has been written (:meth:`relay.store.db.Database.snapshot_version`):
every text asks, and its texts change far more often than calls end."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store import Database, Prepared, SnapshotCache
from relay.store.models import Call, Message, TranscriptSegment
from relay.timefmt import iso
from relay.turns import HISTORY_LIMIT
from sms.store import table_of

# No text has a seq this high (an INTEGER column): "before it" is every text.
NO_SEQ_LIMIT = 2**31 - 1

# Built once, on the Core tables, values as parameters (see sms.store).
_messages, _calls, _segments = table_of(Message), table_of(Call), table_of(TranscriptSegment)
# created_at as the driver gives it (SQLite: text), turned into a time by _moment: the same
# last texts come back for every text of a conversation.
_TEXTS = Prepared(
    select(
        _messages.c.direction,
        _messages.c.text,
        type_coerce(_messages.c.created_at, String),
        _messages.c.seq,
    )
    .where(
        _messages.c.conversation_id == bindparam("b_conversation_id"),
        _messages.c.seq < bindparam("b_before_seq"),
    )
    .order_by(_messages.c.seq.desc())
    .limit(bindparam("b_limit", type_=Integer))
)
_SPOKEN = Prepared(
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


@functools.lru_cache(maxsize=4096)
def _moment(raw: str | datetime) -> tuple[datetime, str]:
    """A stored time (SQLite's text, or a driver's datetime): aware, and as ISO 8601."""
    at = raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at, iso(at)


# (at, seq, speaker, text, interrupted, at as ISO 8601): one spoken line
Spoken = tuple[datetime, int, str, str, bool, str]
# (project, our number, their number, limit) -> the calls' lines, newest first
_spoken: SnapshotCache[tuple[str, str, str, int], list[Spoken]] = SnapshotCache(
    ("calls", "transcript_segments")
)


async def _spoken_lines(
    session: AsyncSession, params: dict[str, Any], db: Database | None
) -> list[Spoken]:
    async def read() -> list[Spoken]:
        lines: list[Spoken] = []
        rows = await _SPOKEN.rows(session, params)
        for speaker, text, interrupted, start_ms, seq, started, created in rows:
            at = (started or created) + timedelta(milliseconds=start_ms)
            lines.append((at, seq, speaker, text, bool(interrupted), iso(at)))
        return lines

    key = (
        params["b_project_id"],
        params["b_our_number"],
        params["b_their_number"],
        params["b_limit"],
    )
    return await _spoken.get(session, db, key, read)


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
    db: Database | None = None,
) -> list[dict[str, Any]]:
    """The last ``limit`` entries, oldest first; only what happened before ``before``
    (texts: before ``before_seq``), so the text being answered is not part of it. ``db``:
    the handle ``session`` came from, to keep the calls' part between texts (SQLite)."""
    params = {
        "b_conversation_id": conversation_id,
        "b_before_seq": NO_SEQ_LIMIT if before_seq is None else before_seq,
        "b_project_id": project_id,
        "b_our_number": our_number,
        "b_their_number": their_number,
        "b_limit": limit,
    }
    entries: list[tuple[datetime, int, dict[str, Any]]] = []
    for direction, text, created, seq in await _TEXTS.rows(session, params):
        at, at_iso = _moment(created)
        role = "user" if direction == "inbound" else "agent"
        entries.append((at, seq, {"role": role, "content": text, "channel": "sms", "at": at_iso}))
    for at, seq, speaker, text, interrupted, at_iso in await _spoken_lines(session, params, db):
        if before is not None and at > before:
            continue
        entry: dict[str, Any] = {"role": speaker, "content": text, "channel": "voice"}
        if interrupted:
            entry["interrupted"] = True
        entry["at"] = at_iso
        entries.append((at, seq, entry))
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries[-limit:]]
