"""The engine's records on SQLite and PostgreSQL: ordered batched writes, one idempotent end."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from relay.calls.records import CallRecorder, end_call
from relay.engine.ports import Segment
from relay.store.models import Call, CallEvent, LifecycleEvent, TranscriptSegment, TurnMetrics
from tests.engine.harness import make_call


@pytest.fixture
async def db(database):
    await database.migrate()
    return database


async def test_recorder_stores_segments_metrics_events_and_state_in_order(db):
    call_id = await make_call(db)
    recorder = CallRecorder(db, call_id)
    recorder.segment(Segment(1, "user", "Hello", 100, 900))
    recorder.segment(Segment(2, "agent", "Hi there", 1200, 2000, interrupted=True))
    recorder.turn_metrics("turn_1", {"e2e_ms": 812.5})
    recorder.event("webhook", "webhook turn failed: timeout: slow", level="error")
    recorder.conversation_state({"step": 2})
    await recorder.flush()
    async with db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
        metrics = (await s.scalars(select(TurnMetrics))).all()
        events = (await s.scalars(select(CallEvent))).all()
        call = await s.get(Call, call_id)
    assert [(g.speaker, g.text, g.start_ms, g.end_ms, g.interrupted) for g in segs] == [
        ("user", "Hello", 100, 900, False),
        ("agent", "Hi there", 1200, 2000, True),
    ]
    assert [(m.turn_id, m.values) for m in metrics] == [("turn_1", {"e2e_ms": 812.5})]
    assert [(e.source, e.level) for e in events] == [("webhook", "error")]
    assert call.conversation_state == {"step": 2}
    assert recorder.failed_writes == 0


async def test_end_call_is_one_transaction_and_idempotent(db):
    call_id = await make_call(db)
    async with db.session() as s:
        assert await end_call(
            s, call_id, "failed", reason="webhook_error", event="3 webhook turns failed in a row"
        )
    async with db.session() as s:
        assert not await end_call(s, call_id, "completed", event="late")
    async with db.session() as s:
        call = await s.get(Call, call_id)
        events = (await s.scalars(select(CallEvent).order_by(CallEvent.id))).all()
        lifecycle = (await s.scalars(select(LifecycleEvent))).all()
    assert (call.status, call.failure_reason) == ("failed", "webhook_error")
    assert call.ended_at is not None
    assert sorted((e.source, e.message) for e in events) == [
        ("engine", "3 webhook turns failed in a row"),
        ("lifecycle", "status -> failed (webhook_error)"),
    ]
    assert [e.type for e in lifecycle] == ["call.failed", "transcript.ready"]
