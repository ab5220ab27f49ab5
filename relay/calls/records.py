"""What the voice engine reports about a call, stored: transcript, turn metrics, events,
state, the recording; and the end.

The engine never waits on the database in its audio path: a :class:`CallRecorder` (the
engine's :class:`~relay.engine.ports.CallSink`) queues rows and one writer task per call
stores them in order, several per transaction. :func:`end_call` writes a running call's end;
it is idempotent, so a call that already ended (expired, failed by recovery) stays as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.calls import recordings
from relay.calls.event_log import log_event
from relay.calls.lifecycle import LIVE, transition
from relay.calls.transcripts import transcript_text
from relay.config import Settings
from relay.engine.ports import Segment
from relay.engine.recording import StereoRecorder
from relay.events import emit
from relay.ids import new_id
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, TranscriptSegment, TurnMetrics

log = get_logger("relay.calls.records")

Write = Callable[[AsyncSession], Any]


async def end_call(
    session: AsyncSession,
    call_id: str,
    status: str,
    *,
    reason: str | None = None,
    event: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """End ``call_id`` as ``completed`` or ``failed`` (with ``reason``) in the caller's
    transaction, with an engine event saying why. Returns False if the call had already
    ended (nothing is written then)."""
    call = await session.scalar(select(Call).where(Call.id == call_id).with_for_update())
    if call is None or call.status not in LIVE:
        return False
    if event:
        await log_event(
            session,
            call_id,
            "engine",
            event,
            level="error" if status == "failed" else "info",
            data=data,
        )
    if status == "completed" and call.status != "in_progress":
        await transition(session, call, "in_progress")
    await transition(session, call, status, reason=reason)
    await _transcript_ready(session, call)
    return True


async def _transcript_ready(session: AsyncSession, call: Call) -> None:
    """``transcript.ready``: the engine flushed every segment before the call's end is
    stored, so the transcript is final in this transaction."""
    segments = (
        await session.scalars(
            select(TranscriptSegment)
            .where(TranscriptSegment.call_id == call.id)
            .order_by(TranscriptSegment.seq, TranscriptSegment.id)
        )
    ).all()
    await emit(
        session,
        project_id=call.project_id,
        type="transcript.ready",
        ordering_key=call.id,
        data={
            "callId": call.id,
            "agentId": call.agent_id,
            "status": call.status,
            "text": transcript_text(segments),
            "segments": [
                {
                    "seq": s.seq,
                    "speaker": s.speaker,
                    "text": s.text,
                    "startMs": s.start_ms,
                    "endMs": s.end_ms,
                    "interrupted": s.interrupted,
                }
                for s in segments
            ],
        },
    )


class CallRecorder:
    """Ordered, batched, fire-and-forget writes for one call: the engine's call sink."""

    def __init__(
        self,
        db: Database,
        call_id: str,
        *,
        project_id: str = "",
        settings: Settings | None = None,
        jobs: recordings.RecordingJobs | None = None,
    ) -> None:
        self.db = db
        self.call_id = call_id
        self.project_id = project_id
        self.settings = settings or Settings()
        self.jobs = jobs or recordings.RecordingJobs()
        self._queue: asyncio.Queue[Write | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.failed_writes = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"recorder-{self.call_id}")

    def _put(self, write: Write) -> None:
        self._queue.put_nowait(write)
        self.start()

    def write(self, write: Write) -> None:
        """Any other write, in order with the rest."""
        self._put(write)

    def event(
        self,
        source: str,
        message: str,
        *,
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        async def write(session: AsyncSession) -> None:
            await log_event(session, self.call_id, source, message, level=level, data=data)

        self._put(write)

    def segment(self, seg: Segment) -> None:
        async def write(session: AsyncSession) -> None:
            session.add(
                TranscriptSegment(
                    id=new_id("seg"),
                    call_id=self.call_id,
                    seq=seg.seq,
                    speaker=seg.speaker,
                    text=seg.text,
                    start_ms=seg.start_ms,
                    end_ms=seg.end_ms,
                    interrupted=seg.interrupted,
                    data=seg.data,
                )
            )

        self._put(write)

    def turn_metrics(self, turn_id: str, values: dict[str, Any]) -> None:
        async def write(session: AsyncSession) -> None:
            session.add(
                TurnMetrics(id=new_id("tm"), call_id=self.call_id, turn_id=turn_id, values=values)
            )

        self._put(write)

    def agent_interrupted(self, turn_id: str, heard: str, spoken_ms: int) -> None:
        async def write(session: AsyncSession) -> None:
            await emit(
                session,
                project_id=self.project_id,
                type="agent.interrupted",
                ordering_key=self.call_id,
                data={
                    "callId": self.call_id,
                    "turnId": turn_id,
                    "heard": heard,
                    "spokenMs": spoken_ms,
                },
            )

        self._put(write)

    def conversation_state(self, state: dict[str, Any]) -> None:
        async def write(session: AsyncSession) -> None:
            call = await session.get(Call, self.call_id)
            if call is not None:
                call.conversation_state = state

        self._put(write)

    def recording_dir(self) -> Path:
        return recordings.recordings_dir(self.settings, self.project_id)

    def recording_started(self, recording: StereoRecorder) -> None:
        async def write(session: AsyncSession) -> None:
            await recordings.open_row(
                session, self.settings, self.call_id, self.project_id, recording
            )

        self._put(write)

    def recording_finished(self, recording: StereoRecorder) -> None:
        """Encoded and stored in the background: the call's end never waits for it."""
        self.jobs.spawn(recordings.finish(self.db, self.call_id, recording))

    async def flush(self) -> None:
        """Wait until everything queued so far is stored, and stop the writer."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 100:
                batch.append(self._queue.get_nowait())
            if None in batch:
                stop = True
            writes = [w for w in batch if w is not None]
            if not writes:
                continue
            try:
                async with self.db.session() as session:
                    for write in writes:
                        await write(session)
            except Exception as exc:  # the call goes on even if its log cannot be written
                self.failed_writes += len(writes)
                log.error("call_record_failed", call_id=self.call_id, error=repr(exc))
