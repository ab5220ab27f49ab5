"""What a call left behind, as the API shows it: transcript, latency metrics, event log.

The voice engine writes these rows (:mod:`relay.calls.records`); this module reads them for
``GET /v1/calls/{id}`` and its ``/transcript``, ``/metrics`` and ``/events`` sub-resources.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.pagination import cursor_row, fetch_page, keyset
from relay.api.schema import OutModel, Page, PageQuery
from relay.calls.transcripts import transcript_text
from relay.store.models import Call, CallEvent, TranscriptSegment, TurnMetrics, utcnow


class SegmentOut(OutModel):
    seq: int
    speaker: str
    text: str
    start_ms: int
    end_ms: int
    interrupted: bool
    data: dict[str, Any] | None = Field(
        default=None,
        description="tool: toolCallId, name, arguments, result, error, status, durationMs, "
        "turnId; dtmf: digits.",
    )


class TranscriptOut(OutModel):
    call_id: str
    text: str = Field(description="One line per segment: `Caller: ...`, `Agent: ...`.")
    segments: list[SegmentOut]


class CallEventOut(OutModel):
    id: str
    call_id: str
    level: str
    source: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class Stat(OutModel):
    count: int
    mean: float
    p50: float
    p95: float
    max: float


class MetricsOut(OutModel):
    call_id: str
    duration_seconds: float | None
    turns: int
    stages: dict[str, Stat] = Field(description="Per measured stage (milliseconds).")
    per_turn: list[dict[str, Any]]


class EventQuery(PageQuery):
    level: Literal["info", "warning", "error"] | None = None
    source: str | None = Field(default=None, max_length=20)


def duration_seconds(call: Call) -> float | None:
    """From answer to end (to now while the call runs); None if it was never answered."""
    if call.started_at is None:
        return None
    end = call.ended_at or utcnow()
    return round((end - call.started_at).total_seconds(), 3)


async def transcript(session: AsyncSession, call_id: str) -> TranscriptOut:
    segments = list(
        (
            await session.execute(
                select(TranscriptSegment)
                .where(TranscriptSegment.call_id == call_id)
                .order_by(TranscriptSegment.seq, TranscriptSegment.id)
            )
        ).scalars()
    )
    return TranscriptOut(
        call_id=call_id,
        text=transcript_text(segments),
        segments=[
            SegmentOut(
                seq=s.seq,
                speaker=s.speaker,
                text=s.text,
                start_ms=s.start_ms,
                end_ms=s.end_ms,
                interrupted=s.interrupted,
                data=s.data,
            )
            for s in segments
        ],
    )


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def _stat(values: list[float]) -> Stat:
    return Stat(
        count=len(values),
        mean=round(sum(values) / len(values), 3),
        p50=_percentile(values, 50),
        p95=_percentile(values, 95),
        max=max(values),
    )


def _camel(name: str) -> str:
    """``e2e_ms`` -> ``e2eMs`` (pydantic's ``to_camel`` makes it ``e2EMs``)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


async def metrics(session: AsyncSession, call: Call) -> MetricsOut:
    rows = list(
        (
            await session.execute(
                select(TurnMetrics)
                .where(TurnMetrics.call_id == call.id)
                .order_by(TurnMetrics.created_at, TurnMetrics.id)
            )
        ).scalars()
    )
    by_stage: dict[str, list[float]] = {}
    for row in rows:
        for name, value in (row.values or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_stage.setdefault(_camel(name), []).append(float(value))
    return MetricsOut(
        call_id=call.id,
        duration_seconds=duration_seconds(call),
        turns=len(rows),
        stages={name: _stat(values) for name, values in by_stage.items()},
        per_turn=[
            {"turnId": r.turn_id, **{_camel(k): v for k, v in (r.values or {}).items()}}
            for r in rows
        ],
    )


def event_out(e: CallEvent) -> CallEventOut:
    return CallEventOut(
        id=e.id,
        call_id=e.call_id,
        level=e.level,
        source=e.source,
        message=e.message,
        data=e.data,
        created_at=e.created_at,
    )


async def first_events(session: AsyncSession, call_id: str, limit: int) -> list[CallEventOut]:
    rows = await session.execute(
        select(CallEvent)
        .where(CallEvent.call_id == call_id)
        .order_by(CallEvent.created_at, CallEvent.id)
        .limit(limit)
    )
    return [event_out(e) for e in rows.scalars()]


async def events_page(session: AsyncSession, call_id: str, query: EventQuery) -> Page[CallEventOut]:
    """Oldest first. Ids alone do not order events written in the same millisecond, so the
    order (and the cursor) is ``(created_at, id)``."""
    mark = await cursor_row(session, CallEvent, query.cursor, lambda m: m.call_id == call_id)
    stmt = select(CallEvent).where(CallEvent.call_id == call_id)
    if query.level:
        stmt = stmt.where(CallEvent.level == query.level)
    if query.source:
        stmt = stmt.where(CallEvent.source == query.source)
    stmt = keyset(stmt, (CallEvent.created_at, CallEvent.id), mark, descending=False)
    return (await fetch_page(session, stmt, query)).page(Page[CallEventOut], event_out)
