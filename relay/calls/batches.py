"""Batches: many outbound calls from one agent, one :class:`~relay.store.models.DialJob` per
recipient in the dialling queue (:mod:`relay.calls.dial_queue`).

    scheduled -> running -> completed
         \\---------\\-> paused -> (scheduled | running)
    any but completed -> canceled

``batch.started`` is emitted when its first call is created, ``batch.completed`` when no
recipient waits or is being called any more (after a cancel too, once its last live call
ends). Every change is written by this module, in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.events import emit
from relay.ids import new_id
from relay.store.models import Batch, DialJob, OptOut, utcnow
from relay.timefmt import iso

DIALLING = ("scheduled", "running")
OPEN = ("waiting", "active")
JOB_STATES = ("waiting", "active", "completed", "failed", "skipped", "canceled")
LISTED_BY_PROJECT = "project"  # sms.optout's value for the do-not-contact list


@dataclass(frozen=True, slots=True)
class Recipient:
    to: str
    variables: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Why it is not dialled (``dnc_conflict``...), decided when the batch is created.
    skipped: str | None = None


async def listed(session: AsyncSession, project_id: str, numbers: list[str]) -> dict[str, str]:
    """Which of ``numbers`` the project may not call, and who listed each (``project``, or
    ``recipient`` for a STOP): read in the transaction that stores the batch or makes a
    call. (The opt-out table itself; the domain layers do not import :mod:`sms`.)"""
    if not numbers:
        return {}
    rows = await session.execute(
        select(OptOut.phone_number, OptOut.listed_by).where(
            OptOut.project_id == project_id,
            OptOut.phone_number.in_(numbers),
            OptOut.opted_in_at.is_(None),
        )
    )
    return {number: by for number, by in rows}


def skip_reason(listed_by: str) -> str:
    """A listed recipient's reason: ``dnc_conflict`` (the project listed it), ``opted_out``."""
    return "dnc_conflict" if listed_by == LISTED_BY_PROJECT else "opted_out"


def create(
    session: AsyncSession,
    *,
    project_id: str,
    agent_id: str,
    number_id: str,
    recipients: list[tuple[int, Recipient]],
    invalid: list[dict[str, Any]],
    scheduled_at: datetime | None,
    window: dict[str, Any] | None,
    max_concurrency: int | None,
    retry: dict[str, Any],
) -> Batch:
    """Store a batch and its recipients' jobs (``position`` is the row in the request)."""
    now = utcnow()
    batch = Batch(
        id=new_id("bat"),
        project_id=project_id,
        agent_id=agent_id,
        number_id=number_id,
        state="scheduled",
        scheduled_at=scheduled_at,
        window=window,
        max_concurrency=max_concurrency,
        retry=retry,
        invalid=invalid,
        created_at=now,
    )
    session.add(batch)
    due = max(scheduled_at, now) if scheduled_at is not None else now
    session.add_all(
        DialJob(
            id=new_id("djb"),
            project_id=project_id,
            batch_id=batch.id,
            position=position,
            to_number=r.to,
            variables=r.variables,
            job_metadata=r.metadata,
            state="skipped" if r.skipped else "waiting",
            outcome=r.skipped,
            not_before=due,
            attempts=0,
            call_ids=[],
            created_at=now,
            updated_at=now,
        )
        for position, r in recipients
    )
    return batch


async def counts(session: AsyncSession, batch_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(DialJob.state, func.count())
        .where(DialJob.batch_id == batch_id)
        .group_by(DialJob.state)
    )
    found = {state: int(n) for state, n in rows}
    return {state: found.get(state, 0) for state in JOB_STATES}


def payload(batch: Batch, tally: dict[str, int]) -> dict[str, Any]:
    """What ``batch.*`` webhooks say about a batch."""
    return {
        "batchId": batch.id,
        "agentId": batch.agent_id,
        "state": batch.state,
        "counts": tally,
        "invalid": len(batch.invalid or []),
        "createdAt": iso(batch.created_at),
        "startedAt": iso(batch.started_at) if batch.started_at else None,
        "completedAt": iso(batch.completed_at) if batch.completed_at else None,
    }


async def started(session: AsyncSession, batch: Batch, now: datetime) -> None:
    """Its first call is being made: ``running`` and ``batch.started`` (once)."""
    if batch.started_at is not None:
        return
    batch.started_at = now
    if batch.state == "scheduled":
        batch.state = "running"
    await emit(
        session,
        project_id=batch.project_id,
        type="batch.started",
        data=payload(batch, await counts(session, batch.id)),
        ordering_key=batch.id,
    )


_JOB_IN = (
    select(DialJob.id)
    .where(
        DialJob.batch_id == bindparam("b_batch"),
        DialJob.state.in_(bindparam("b_states", expanding=True)),
    )
    .limit(1)
)
_LOCK = select(Batch.completed_at).where(Batch.id == bindparam("b_batch")).with_for_update()


async def finish_if_done(
    session: AsyncSession, batch: Batch, now: datetime, *, none_waiting: bool = False
) -> bool:
    """``completed`` (or stays ``canceled``) and ``batch.completed`` once nothing is open.
    ``none_waiting``: the caller saw that no recipient waits (a cheap early no if one does)."""
    if batch.completed_at is not None or batch.state == "paused":
        return False
    await session.flush()
    # Most calls that end leave recipients waiting: one indexed probe, not the counts.
    waiting = {"b_batch": batch.id, "b_states": ["waiting"]}
    if not none_waiting and (await session.execute(_JOB_IN, waiting)).first():
        return False
    # Its last calls may end at once, each settled in a transaction of its own (PostgreSQL):
    # the batch's row lock orders them, so the last to commit sees the others' ends.
    locked = await session.execute(_LOCK, {"b_batch": batch.id})
    if locked.scalar_one_or_none() is not None:  # another one completed it meanwhile
        return False
    if (await session.execute(_JOB_IN, {"b_batch": batch.id, "b_states": list(OPEN)})).first():
        return False
    tally = await counts(session, batch.id)
    batch.completed_at = now
    if batch.state != "canceled":
        batch.state = "completed"
    await emit(
        session,
        project_id=batch.project_id,
        type="batch.completed",
        data=payload(batch, tally),
        ordering_key=batch.id,
    )
    return True


def pause(batch: Batch) -> None:
    batch.state = "paused"


def resume(batch: Batch) -> None:
    batch.state = "running" if batch.started_at is not None else "scheduled"


async def cancel(session: AsyncSession, batch: Batch) -> None:
    """No more dialling: recipients still waiting end ``canceled``; calls already ringing or
    talking end on their own (and are not retried)."""
    now = utcnow()
    batch.state = "canceled"
    await session.execute(
        update(DialJob)
        .where(DialJob.batch_id == batch.id, DialJob.state == "waiting")
        .values(state="canceled", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await finish_if_done(session, batch, now)


__all__ = [
    "DIALLING",
    "LISTED_BY_PROJECT",
    "OPEN",
    "JOB_STATES",
    "Recipient",
    "cancel",
    "counts",
    "create",
    "finish_if_done",
    "listed",
    "pause",
    "payload",
    "resume",
    "skip_reason",
    "started",
]
