"""Call recordings in the store: the row's life, the ``recording.ready`` event, retention.

    pending  -> ready | failed      (the engine starts it; the encoder finishes it)
    ready    -> expired             (the purge job deleted the file after the retention)

When a call whose snapshot has ``recording_enabled`` reaches the voice engine, the engine
spools both sides (:mod:`relay.engine.recording`) and this module writes a ``pending`` row.
At the end of the call :func:`finish` encodes the file in a worker thread, then stores
``ready`` with a ``recording.ready`` lifecycle event (or ``failed``) in ONE transaction.

Retention: each project keeps recordings ``recording_retention_days`` (30-365, default 90;
``PATCH /v1/project``). :class:`RecordingWorker` runs every ``RELAY_RECORDING_PURGE_SECONDS``
on every node: it deletes older files and marks their rows ``expired``, and fails rows left
``pending`` by a relay that died before it could encode them. A row names the node that
spools and encodes it (``claimed_by``): when that node dies, the survivor that takes it over
fails its pending rows at once (:func:`abandon_claims`; the audio spooled in the dead
process cannot be finished elsewhere), the age check being the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.calls.event_log import log_event
from relay.calls.lifecycle import LIVE
from relay.config import Settings
from relay.engine.recording import StereoRecorder
from relay.events import emit
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, Project, Recording, utcnow

log = get_logger("relay.calls.recordings")

PENDING, READY, FAILED, EXPIRED = "pending", "ready", "failed", "expired"
RETENTION_DAYS = (30, 365)
DEFAULT_RETENTION_DAYS = 90
# A row still pending this long after its call ended lost its encoder (the relay died).
ABANDONED_AFTER = timedelta(minutes=30)
ABANDONED = "the relay stopped before the recording was encoded"
WAIT_FOR_END_S = 30.0
_ENCODER = None  # one encoding thread per process: recordings queue instead of crowding CPUs


def recordings_dir(settings: Settings, project_id: str) -> Path:
    return settings.data_dir / "recordings" / project_id


def absolute(settings: Settings, row: Recording) -> Path:
    return settings.data_dir / row.path


async def open_row(
    session: AsyncSession, settings: Settings, call_id: str, project_id: str, rec: StereoRecorder
) -> None:
    """The ``pending`` row of a recording that has started."""
    if await session.get(Recording, call_id) is not None:
        return
    session.add(
        Recording(
            call_id=call_id,
            project_id=project_id,
            status=PENDING,
            path=str(rec.output.relative_to(settings.data_dir)),
            sample_rate=rec.rate,
            claimed_by=settings.effective_node_id(),
            created_at=utcnow(),
        )
    )


def recording_payload(call: Call, row: Recording) -> dict[str, Any]:
    """``recording.ready``'s data. No URL: a signed one would expire before a retried
    delivery arrives; ``GET /v1/calls/{id}/recording`` hands out a fresh one."""
    return {
        "callId": call.id,
        "agentId": call.agent_id,
        "status": row.status,
        "durationSeconds": row.duration_ms / 1000 if row.duration_ms is not None else None,
        "sizeBytes": row.size_bytes,
        "format": "audio/ogg; codecs=opus",
        "channels": {"left": "agent", "right": "caller"},
        "metadata": call.call_metadata,
    }


async def finish(db: Database, call_id: str, rec: StereoRecorder) -> Recording | None:
    """Encode (off the event loop) and store the outcome; never raises. ``recording.ready``
    follows the call's own ``call.completed``/``call.failed``: the transport may record the
    end a moment after the engine stops, so this waits (a while) for it."""
    loop = asyncio.get_running_loop()
    error: str | None = None
    duration_ms = size = 0
    try:
        duration_ms, size = await loop.run_in_executor(_encoder(), rec.encode)
    except Exception as exc:  # RecordingError says what failed; anything else is our bug
        error = str(exc) or repr(exc)
        log.error("recording_failed", call_id=call_id, error=error)
    waited = 0.0
    try:
        while True:
            async with writing(db) as session:
                row = await session.get(Recording, call_id, with_for_update=True)
                call = await session.get(Call, call_id)
                if row is None or call is None or row.status != PENDING:
                    break
                if call.status in LIVE and waited < WAIT_FOR_END_S:
                    pass  # not yet: released below, outside the transaction
                elif error is not None:
                    row.status, row.error = FAILED, error[:1000]
                    await log_event(session, call_id, "engine", error, level="error")
                    return row
                else:
                    await _ready(session, call, row, duration_ms, size)
                    return row
            await asyncio.sleep(0.1)
            waited += 0.1
    except Exception as exc:
        log.error("recording_store_failed", call_id=call_id, error=repr(exc))
        return None
    if row is None or row.status != READY:  # no row was written, or it was given up on
        await loop.run_in_executor(_encoder(), rec.discard)
    return row


async def _ready(
    session: AsyncSession, call: Call, row: Recording, duration_ms: int, size: int
) -> None:
    row.status = READY
    row.duration_ms, row.size_bytes = duration_ms, size
    row.ready_at = utcnow()
    await log_event(
        session,
        call.id,
        "engine",
        f"recording ready ({duration_ms / 1000:.1f} s, {size} bytes)",
        data={"durationMs": duration_ms, "sizeBytes": size},
    )
    await emit(
        session,
        project_id=row.project_id,
        type="recording.ready",
        data=recording_payload(call, row),
        ordering_key=call.id,
    )


def _encoder() -> Any:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-encoder")
    return _ENCODER


class RecordingJobs:
    """The encodes still running after their calls ended; the engine waits for them when
    it shuts down, so a recording is not lost to a clean restart."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# --------------------------------------------------------------------------------- retention


async def purge_once(db: Database, settings: Settings) -> tuple[int, int]:
    """Delete recordings older than their project's retention and fail abandoned ones.
    Returns (expired, abandoned)."""
    now = utcnow()
    expired = abandoned = 0
    async with db.session() as session:
        projects = (
            await session.execute(
                select(Project.id, Project.recording_retention_days).where(
                    Project.id.in_(select(Recording.project_id).where(Recording.status == READY))
                )
            )
        ).all()
    for project_id, days in projects:
        cutoff = now - timedelta(days=days or DEFAULT_RETENTION_DAYS)
        async with db.session() as session:
            rows = list(
                await session.scalars(
                    select(Recording)
                    .where(
                        Recording.project_id == project_id,
                        Recording.status == READY,
                        Recording.created_at < cutoff,
                    )
                    .with_for_update(skip_locked=not db.is_sqlite)
                )
            )
            for row in rows:
                with contextlib.suppress(FileNotFoundError):
                    absolute(settings, row).unlink()
                row.status, row.purged_at = EXPIRED, now
                await log_event(
                    session,
                    row.call_id,
                    "engine",
                    f"recording deleted: older than the project's {days}-day retention",
                )
            expired += len(rows)
    async with db.session() as session:
        stale = list(
            await session.scalars(
                select(Recording)
                .join(Call, Call.id == Recording.call_id)
                .where(
                    Recording.status == PENDING,
                    Call.ended_at.is_not(None),
                    Call.ended_at < now - ABANDONED_AFTER,
                )
            )
        )
        abandoned = await _abandon(session, settings, stale)
    if expired or abandoned:
        log.info("recordings_purged", expired=expired, abandoned=abandoned)
    return expired, abandoned


async def _abandon(session: AsyncSession, settings: Settings, rows: list[Recording]) -> int:
    for row in rows:
        row.status, row.error = FAILED, ABANDONED
        stem = absolute(settings, row).with_suffix("")
        for leftover in (".agent.pcm", ".caller.pcm", ".ogg.part"):
            with contextlib.suppress(FileNotFoundError):
                stem.with_name(stem.name + leftover).unlink()
        await log_event(session, row.call_id, "engine", ABANDONED, level="error")
    return len(rows)


async def abandon_claims(db: Database, settings: Settings, node_id: str) -> int:
    """Fail the recordings ``node_id`` (a dead node) was spooling or encoding. Returns how
    many."""
    async with db.session() as session:
        rows = list(
            await session.scalars(
                select(Recording)
                .where(Recording.status == PENDING, Recording.claimed_by == node_id)
                .with_for_update(skip_locked=True)
            )
        )
        return await _abandon(session, settings, rows)


class RecordingWorker:
    """Runs :func:`purge_once` now and then."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="recording-purge")

    async def stop(self) -> None:
        """Let a purge in progress finish (never cancel a transaction half way: its pooled
        connection would be left in use while the engine is disposed), then stop."""
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await purge_once(self.db, self.settings)
            except Exception as exc:  # the database was away: next round
                log.warning("recording_purge_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.recording_purge_seconds)


RECORDINGS: web.AppKey[RecordingWorker] = web.AppKey("relay_recordings", RecordingWorker)
