"""A dial job's rows: its states, how a single call joins the queue, the queue's counts, and
the statements a claim and a settle run (:mod:`relay.calls.dial_queue` runs them).

    due_lanes      a project's live calls and the lanes (single calls, each batch) with work
    ready_jobs     a batch's recipients due now; ready_singles the single calls due now
    lane_of        what a batch lane's claim needs (its agent, number, calling hours)
    batch_call     a batch recipient's call, once its hours and the do-not-call list allow it
    settle_job     a job's outcome once its call ended (retry by the batch's policy, or final)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from relay import calling_hours
from relay.calls import batches
from relay.calls.inbound import agent_snapshot
from relay.calls.lifecycle import open_call
from relay.calls.snapshots import freeze
from relay.ids import new_id
from relay.store.models import (
    Agent,
    Batch,
    Call,
    CallLease,
    DialJob,
    Number,
    Project,
    utcnow,
)

WAITING, ACTIVE = "waiting", "active"
FINAL = ("completed", "failed", "skipped", "canceled")
ENDED = ("completed", "failed")
# A recipient whose local time cannot be told is retried no sooner than this.
UNKNOWN_ZONE_WAIT = timedelta(hours=1)


def retry_kind(reason: str | None) -> str:
    """The retry policy's name for a failure reason: ``busy``, ``no_answer`` or ``failed``."""
    return reason if reason in ("busy", "no_answer") else "failed"


async def enqueue_call(session: AsyncSession, call: Call) -> DialJob:
    """Put a single outbound call (just opened, ``queued``) in the queue, in its transaction."""
    now = utcnow()
    job = DialJob(
        id=new_id("djb"),
        project_id=call.project_id,
        to_number=call.to_number or "",
        variables={},
        job_metadata={},
        state=WAITING,
        not_before=now,
        attempts=0,
        call_id=call.id,
        call_ids=[call.id],
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    return job


@dataclass(frozen=True, slots=True)
class Stats:
    waiting: int
    scheduled: int
    active: int
    completed: int
    failed: int
    canceled: int


async def stats(session: AsyncSession, project_id: str) -> Stats:
    """The project's queue: ``waiting`` (due now), ``scheduled`` (due later), ``active``,
    ``completed``, ``failed`` (skipped ones included), ``canceled``."""
    now = utcnow()
    due = func.sum(case((DialJob.not_before <= now, 1), else_=0))
    rows = await session.execute(
        select(DialJob.state, func.count(), due)
        .where(DialJob.project_id == project_id)
        .group_by(DialJob.state)
    )
    counts: dict[str, int] = {}
    ready = 0
    for state, count, due_now in rows:
        counts[state] = int(count)
        if state == WAITING:
            ready = int(due_now or 0)
    return Stats(
        waiting=ready,
        scheduled=counts.get(WAITING, 0) - ready,
        active=counts.get(ACTIVE, 0),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0) + counts.get("skipped", 0),
        canceled=counts.get("canceled", 0),
    )


_OTHER = aliased(DialJob)
# A call's open job, its batch, and whether another recipient of the batch waits: one
# statement for what settling it reads.
JOB_OF_CALL = (
    select(
        DialJob,
        Batch,
        exists().where(
            _OTHER.batch_id == DialJob.batch_id, _OTHER.state == WAITING, _OTHER.id != DialJob.id
        ),
    )
    .outerjoin(Batch, Batch.id == DialJob.batch_id)
    .where(DialJob.call_id == bindparam("b_call"), DialJob.state.in_((WAITING, ACTIVE)))
    .with_for_update(of=DialJob, skip_locked=True)
)


async def batch_of(session: AsyncSession, job: DialJob) -> Batch | None:
    return await session.get(Batch, job.batch_id) if job.batch_id else None


def end_job(job: DialJob, state: str) -> None:
    job.state = state
    job.node_id = None


def settle_job(job: DialJob, call: Call, batch: Batch | None, now: datetime) -> None:
    job.updated_at = now
    job.outcome = call.failure_reason
    if call.status == "completed":
        end_job(job, "completed")
        return
    policy = batch.retry if batch is not None else {}
    retry_on = policy.get("on") or []
    retryable = (
        batch is not None
        and batch.state not in ("canceled", "completed")
        and retry_kind(call.failure_reason) in retry_on
        and job.attempts < int(policy.get("attempts", 1))
        and call.failure_reason not in ("canceled", "compliance_block")
    )
    if not retryable:
        end_job(job, "failed")
        return
    job.state = WAITING
    job.node_id = None
    job.call_id = None
    job.not_before = now + timedelta(seconds=float(policy.get("backoff", 0)))


async def due_lanes(
    session: AsyncSession, project_id: str, now: datetime
) -> tuple[dict[str | None, int], list[Batch | None]]:
    """The project's active jobs by batch, and its lanes with recipients due: single calls
    first (``None``), then each dialling batch, oldest first. One grouped read for both."""
    rows = await session.execute(
        select(DialJob.batch_id, DialJob.state, func.count())
        .where(
            DialJob.project_id == project_id,
            or_(
                DialJob.state == ACTIVE,
                and_(DialJob.state == WAITING, DialJob.not_before <= now),
            ),
        )
        .group_by(DialJob.batch_id, DialJob.state)
    )
    active: dict[str | None, int] = {}
    ids: set[str | None] = set()
    for batch_id, state, count in rows:
        if state == ACTIVE:
            active[batch_id] = int(count)
        else:
            ids.add(batch_id)
    lanes: list[Batch | None] = [None] if None in ids else []
    ids.discard(None)
    if ids:
        found = await session.execute(
            select(Batch)
            .where(Batch.id.in_(ids), Batch.state.in_(batches.DIALLING))
            .order_by(Batch.id)
            # A batch being paused or canceled right now waits for the next round.
            .with_for_update(skip_locked=True)
        )
        lanes.extend(found.scalars())
    return active, lanes


async def ready_jobs(
    session: AsyncSession, project_id: str, lane: Batch | None, now: datetime, limit: int
) -> list[DialJob]:
    in_lane = DialJob.batch_id.is_(None) if lane is None else DialJob.batch_id == lane.id
    rows = await session.execute(
        select(DialJob)
        .where(
            DialJob.project_id == project_id,
            in_lane,
            DialJob.state == WAITING,
            DialJob.not_before <= now,
        )
        .order_by(DialJob.not_before, DialJob.position, DialJob.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(rows.scalars())


_SINGLES = (
    select(DialJob, Call, Number, CallLease.node_id)
    .join(Call, Call.id == DialJob.call_id)
    .outerjoin(Number, Number.id == Call.number_id)
    .outerjoin(CallLease, CallLease.call_id == Call.id)
    .where(
        DialJob.project_id == bindparam("b_project"),
        DialJob.batch_id.is_(None),
        DialJob.state == WAITING,
        DialJob.not_before <= bindparam("b_now"),
    )
    .order_by(DialJob.not_before, DialJob.position, DialJob.id)
    .limit(bindparam("b_limit"))
    # The call locked with its job, as lock_call would: a call being ended right now (the
    # API) waits for the next round.
    .with_for_update(of=(DialJob, Call), skip_locked=True)
)


async def ready_singles(
    session: AsyncSession, project_id: str, now: datetime, limit: int
) -> list[tuple[DialJob, Call, Number | None, str | None]]:
    """The single calls due, with what claiming each needs (its call, number, and who holds
    it, if anyone): one statement, not four per call."""
    rows = await session.execute(
        _SINGLES.execution_options(populate_existing=True),
        {"b_project": project_id, "b_now": now, "b_limit": limit},
    )
    return [(job, call, number, held) for job, call, number, held in rows]


@dataclass(slots=True)
class Lane:
    """What the calls of one claim in one lane share, read once: no query per recipient
    (each would flush the calls made before it, one INSERT at a time)."""

    project: Project
    batch: Batch | None
    agent: Agent | None = None
    number: Number | None = None
    listed: dict[str, str] = field(default_factory=dict)


async def lane_of(
    session: AsyncSession, project: Project, batch: Batch | None, jobs: list[DialJob]
) -> Lane:
    if batch is None:
        return Lane(project, None)
    return Lane(
        project,
        batch,
        await session.get(Agent, batch.agent_id) if batch.agent_id else None,
        await session.get(Number, batch.number_id) if batch.number_id else None,
        await batches.listed(session, project.id, [j.to_number for j in jobs]),
    )


async def batch_call(
    session: AsyncSession,
    lane: Lane,
    job: DialJob,
    now: datetime,
    may_dial: Callable[[str], Awaitable[bool]],
) -> Call | None:
    """Create the call of a batch recipient's attempt, or leave the job waiting (outside
    the calling hours, or past the carrier's rate) or ended (on the do-not-call list, agent
    or number gone)."""
    project, batch, agent, number = lane.project, lane.batch, lane.agent, lane.number
    assert batch is not None
    listed_by = lane.listed.get(job.to_number)
    if agent is None or number is None or number.released_at is not None:
        end_job(job, "failed")
        job.outcome = "agent_deleted" if agent is None else "number_released"
        return None
    if listed_by is not None:
        end_job(job, "skipped")
        job.outcome = batches.skip_reason(listed_by)
        return None
    base = agent_snapshot(agent)
    policy = calling_hours.effective(project.calling_hours, base.get("calling_hours"))
    for stored in (policy, batch.window):
        verdict = calling_hours.decide(stored, job.to_number, now)
        if not verdict.allowed:
            job.not_before = verdict.next_allowed_at or now + UNKNOWN_ZONE_WAIT
            job.outcome = verdict.reason
            return None
    if not await may_dial(number.provider):
        return None
    call = Call(
        id=new_id("call"),
        project_id=project.id,
        agent_id=agent.id,
        number_id=number.id,
        direction="outbound",
        connection_type=number.provider,
        from_number=number.phone_number,
        to_number=job.to_number,
        status="queued",
        voice_mode=agent.voice_mode,
        agent_snapshot=freeze(base, job.variables),
        call_metadata={**job.job_metadata, "batchId": batch.id},
        created_at=now,
    )
    await open_call(session, call)
    return call
