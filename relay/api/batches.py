"""``/v1/calls/batch`` and ``/v1/batches``: up to 500 outbound calls from one agent, dialled
through the dialling queue (:mod:`relay.calls.dial_queue`), and ``/v1/calls/queue/stats``.

Each recipient row is checked on its own: a bad row is reported in ``invalid`` (its index,
code and message) and the others are queued; a number on the do-not-call list is kept as a
``skipped`` recipient with reason ``dnc_conflict`` (``opted_out`` if it texted STOP).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.agents import load_agent
from relay.api.call_create import Variables, caller_number
from relay.api.compliance import CallingHours, CallingHoursOut, hours_out
from relay.api.limits import Metadata
from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel, Page, PageQuery
from relay.api.webhook_payloads import BatchCounts
from relay.calls import batches
from relay.calls.dial_queue import DIAL_QUEUE, stats
from relay.errors import Conflict, NotFound, ValidationFailed
from relay.events.writing import writing
from relay.phone import e164_or_none
from relay.store.models import Batch, DialJob

router = Router()
TAG = "Batches"
MAX_RECIPIENTS = 500

INVALID_NUMBER = "Not a valid phone number; send E.164 (+14155550123)."
DUPLICATE = "This number is already a recipient of this batch (row {first})."
NO_VALID = "No recipient of this batch can be called; see details."
NOT_ACTIVE = "The batch is {state}; only a scheduled or running batch can be paused."
NOT_PAUSED = "The batch is {state}; only a paused batch can be resumed."
ENDED = "The batch is {state} already."
RetryOn = Literal["busy", "no_answer", "failed"]


def _default_retry_on() -> list[RetryOn]:
    return ["busy", "no_answer"]


class RetryPolicy(APIModel):
    attempts: int = Field(default=1, ge=1, le=10, description="Calls per recipient at most.")
    backoff: int = Field(default=300, ge=0, le=86400, description="Seconds before a retry.")
    on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        max_length=3,
        description="Which endings are retried (`failed`: any other failure).",
    )


class RecipientIn(APIModel):
    to: str = Field(max_length=40)
    variables: Variables | None = Field(
        default=None, description="Fill `{{variables.name}}` for this recipient's call."
    )
    metadata: Metadata | None = Field(default=None, description="Stored with its calls.")


class BatchCreate(APIModel):
    agent_id: str = Field(max_length=60)
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=40,
        description="Caller id: a number of this project (default: the agent's first).",
    )
    recipients: list[Any] = Field(
        min_length=1,
        max_length=MAX_RECIPIENTS,
        description="`{to, variables?, metadata?}` each; a bad row is reported, not fatal.",
    )
    scheduled_at: AwareDatetime | None = Field(
        default=None, description="Start no sooner than this (default: now)."
    )
    window: CallingHours | None = Field(
        default=None,
        description="Also keep to these hours (callee local time), on top of the "
        "project's and agent's calling hours; a recipient outside them waits.",
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=100, description="Live calls of this batch at most."
    )
    retry: RetryPolicy | None = None


class InvalidRecipient(OutModel):
    index: int
    to: Any = None
    code: str
    message: str


class RecipientOut(OutModel):
    index: int
    to: str
    state: Literal["waiting", "active", "completed", "failed", "skipped", "canceled"]
    attempts: int
    call_ids: list[str]
    reason: str | None = Field(description="Why it failed, was skipped, or waits.")
    next_attempt_at: datetime | None


class BatchOut(OutModel):
    id: str
    object: Literal["batch"] = "batch"
    agent_id: str | None
    state: Literal["scheduled", "running", "paused", "canceled", "completed"]
    scheduled_at: datetime | None
    window: CallingHoursOut | None
    max_concurrency: int | None
    retry: dict[str, Any]
    counts: BatchCounts
    invalid: list[InvalidRecipient]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class BatchDetail(BatchOut):
    recipients: list[RecipientOut]


class QueueStats(OutModel):
    object: Literal["queue_stats"] = "queue_stats"
    waiting: int = Field(description="Due now, waiting for room under the caps.")
    scheduled: int = Field(description="Due later: a scheduled batch, a retry, calling hours.")
    active: int
    completed: int
    failed: int = Field(description="Failed after every attempt, or skipped.")
    canceled: int


def _check_rows(
    raw: list[Any],
) -> tuple[list[tuple[int, batches.Recipient]], list[dict[str, Any]]]:
    good: list[tuple[int, batches.Recipient]] = []
    bad: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for index, row in enumerate(raw):
        try:
            parsed = RecipientIn.model_validate(row)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            code = err["type"] if err["type"].endswith("_too_large") else "invalid_recipient"
            to = row.get("to") if isinstance(row, dict) else None
            bad.append({"index": index, "to": to, "code": code, "message": err["msg"]})
            continue
        to = e164_or_none(parsed.to)
        if to is None:
            bad.append(
                {
                    "index": index,
                    "to": parsed.to,
                    "code": "invalid_phone_number",
                    "message": INVALID_NUMBER,
                }
            )
            continue
        if to in first:
            bad.append(
                {
                    "index": index,
                    "to": to,
                    "code": "duplicate_recipient",
                    "message": DUPLICATE.format(first=first[to]),
                }
            )
            continue
        first[to] = index
        good.append((index, batches.Recipient(to, parsed.variables or {}, parsed.metadata or {})))
    return good, bad


async def _recipients(session: AsyncSession, batch_id: str) -> list[DialJob]:
    rows = await session.execute(
        select(DialJob).where(DialJob.batch_id == batch_id).order_by(DialJob.position)
    )
    return list(rows.scalars())


def _out(batch: Batch, counts: dict[str, int]) -> BatchOut:
    return BatchOut(
        id=batch.id,
        agent_id=batch.agent_id,
        state=batch.state,
        scheduled_at=batch.scheduled_at,
        window=hours_out(batch.window),
        max_concurrency=batch.max_concurrency,
        retry=batch.retry,
        counts=BatchCounts(**counts),
        invalid=[InvalidRecipient(**row) for row in batch.invalid or []],
        created_at=batch.created_at,
        started_at=batch.started_at,
        completed_at=batch.completed_at,
    )


def _recipient_out(job: DialJob) -> RecipientOut:
    waiting = job.state == "waiting"
    return RecipientOut(
        index=job.position,
        to=job.to_number,
        state=job.state,
        attempts=job.attempts,
        call_ids=list(job.call_ids or []),
        reason=job.outcome,
        next_attempt_at=job.not_before if waiting else None,
    )


async def _detail(session: AsyncSession, batch: Batch) -> BatchDetail:
    jobs = await _recipients(session, batch.id)
    counts = dict.fromkeys(batches.JOB_STATES, 0)
    for job in jobs:
        counts[job.state] += 1
    return BatchDetail(
        **_out(batch, counts).model_dump(), recipients=[_recipient_out(j) for j in jobs]
    )


async def _load(ctx: Context, session: AsyncSession, *, lock: bool = False) -> Batch:
    batch_id = ctx.path("batch_id")
    batch = (
        await session.execute(
            select(Batch)
            .where(Batch.id == batch_id, Batch.project_id == ctx.project_id)
            .with_for_update(skip_locked=False)
            if lock
            else select(Batch).where(Batch.id == batch_id, Batch.project_id == ctx.project_id)
        )
    ).scalar_one_or_none()
    if batch is None:
        raise NotFound(f"No batch {batch_id!r} in this project.")
    return batch


@router.route(
    "POST",
    "/v1/calls/batch",
    summary="Call many recipients from one agent",
    tag=TAG,
    body=BatchCreate,
    response=BatchDetail,
    status=202,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def create_batch(ctx: Context, body: BatchCreate) -> BatchDetail:
    """Queues one call per recipient (1-500), each with ``batchId`` in its metadata and its
    own ``{{variables.*}}``; dialled under the project's ``maxConcurrentCalls`` and the
    batch's ``maxConcurrency``, in the calling hours (a recipient outside them waits for the
    next legal window), retried by ``retry``. Bad rows are listed in ``invalid``; numbers
    on the do-not-call list are ``skipped`` (``dnc_conflict``). 422
    ``no_valid_recipients`` when no row can be called."""
    good, bad = _check_rows(body.recipients)
    if not good:
        raise ValidationFailed(
            NO_VALID,
            code="no_valid_recipients",
            field="recipients",
            details=[
                {"field": f"recipients.{b['index']}", "code": b["code"], "message": b["message"]}
                for b in bad
            ],
        )
    caller_id = e164_or_none(body.from_) if body.from_ is not None else None
    if body.from_ is not None and caller_id is None:
        raise ValidationFailed(INVALID_NUMBER, code="invalid_phone_number", field="from")
    async with writing(ctx.state.db) as session:
        agent = await load_agent(ctx, session, body.agent_id)
        number = await caller_number(ctx, session, agent, caller_id)
        listed = await batches.listed(session, ctx.project_id, [r.to for _, r in good])
        for i, (index, r) in enumerate(good):
            by = listed.get(r.to)
            if by is not None:
                reason = batches.skip_reason(by)
                good[i] = (index, batches.Recipient(r.to, r.variables, r.metadata, reason))
        retry = (body.retry or RetryPolicy()).model_dump()
        batch = batches.create(
            session,
            project_id=ctx.project_id,
            agent_id=agent.id,
            number_id=number.id,
            recipients=good,
            invalid=bad,
            scheduled_at=body.scheduled_at,
            window=body.window.model_dump(exclude_unset=True) if body.window else None,
            max_concurrency=body.max_concurrency,
            retry=retry,
        )
        await session.flush()
        await batches.finish_if_done(session, batch, batch.created_at)
        detail = await _detail(session, batch)
    ctx.request.app[DIAL_QUEUE].wake(ctx.project_id)
    return detail


@router.route(
    "GET",
    "/v1/batches/{batch_id}",
    summary="Get a batch, its counts and every recipient",
    tag=TAG,
    response=BatchDetail,
    errors=(401, 403, 404, 429),
)
async def get_batch(ctx: Context) -> BatchDetail:
    """Counts by state, and per recipient: state, attempts, call ids, and why it failed,
    was skipped or waits."""
    async with ctx.state.db.session() as session:
        return await _detail(session, await _load(ctx, session))


@router.route(
    "GET",
    "/v1/batches",
    summary="List batches",
    tag=TAG,
    query=PageQuery,
    response=Page[BatchOut],
    errors=(401, 403, 422, 429),
)
async def list_batches(ctx: Context, query: PageQuery) -> Page[BatchOut]:
    """Newest first."""
    stmt = newest_first(select(Batch).where(Batch.project_id == ctx.project_id), Batch.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
        tallies = {b.id: await batches.counts(session, b.id) for b in window.rows}
    return window.page(Page[BatchOut], lambda b: _out(b, tallies[b.id]))


async def _change(ctx: Context, action: str) -> BatchDetail:
    async with writing(ctx.state.db) as session:
        batch = await _load(ctx, session, lock=True)
        if action == "pause":
            if batch.state not in batches.DIALLING:
                raise Conflict(NOT_ACTIVE.format(state=batch.state), code="batch_not_active")
            batches.pause(batch)
        elif action == "resume":
            if batch.state != "paused":
                raise Conflict(NOT_PAUSED.format(state=batch.state), code="batch_not_paused")
            batches.resume(batch)
            await batches.finish_if_done(session, batch, batch.created_at)
        else:
            if batch.state in ("canceled", "completed"):
                raise Conflict(ENDED.format(state=batch.state), code="batch_already_ended")
            await batches.cancel(session, batch)
        detail = await _detail(session, batch)
    ctx.request.app[DIAL_QUEUE].wake(ctx.project_id)
    return detail


@router.route(
    "POST",
    "/v1/batches/{batch_id}/pause",
    summary="Pause a batch",
    tag=TAG,
    response=BatchDetail,
    errors=(401, 403, 404, 409, 429),
)
async def pause_batch(ctx: Context) -> BatchDetail:
    """No new call starts until it is resumed; calls already ringing or talking go on.
    409 ``batch_not_active`` unless it is scheduled or running."""
    return await _change(ctx, "pause")


@router.route(
    "POST",
    "/v1/batches/{batch_id}/resume",
    summary="Resume a paused batch",
    tag=TAG,
    response=BatchDetail,
    errors=(401, 403, 404, 409, 429),
)
async def resume_batch(ctx: Context) -> BatchDetail:
    """409 ``batch_not_paused`` unless it is paused."""
    return await _change(ctx, "resume")


@router.route(
    "POST",
    "/v1/batches/{batch_id}/cancel",
    summary="Cancel a batch",
    tag=TAG,
    response=BatchDetail,
    errors=(401, 403, 404, 409, 429),
)
async def cancel_batch(ctx: Context) -> BatchDetail:
    """Recipients still waiting end ``canceled``; calls already ringing or talking end on
    their own and are not retried. 409 ``batch_already_ended`` if it had ended."""
    return await _change(ctx, "cancel")


@router.route(
    "GET",
    "/v1/calls/queue/stats",
    summary="The project's dialling queue",
    tag=TAG,
    response=QueueStats,
    errors=(401, 403, 429),
)
async def queue_stats(ctx: Context) -> QueueStats:
    """Every outbound call (single or in a batch) by where it is in the queue."""
    async with ctx.state.db.session() as session:
        found = await stats(session, ctx.project_id)
    return QueueStats(
        waiting=found.waiting,
        scheduled=found.scheduled,
        active=found.active,
        completed=found.completed,
        failed=found.failed,
        canceled=found.canceled,
    )
