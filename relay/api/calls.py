"""``/v1/calls``: the call resource. List calls, read what happened (transcript, metrics,
event log, recording), end one. Creating calls is :mod:`relay.api.call_create`.

Publishable keys may create calls and nothing else: every read answers them 403
``publishable_key_not_allowed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic.alias_generators import to_camel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from relay.api import call_log
from relay.api.call_log import CallEventOut, EventQuery, MetricsOut, TranscriptOut, duration_seconds
from relay.api.pagination import fetch_page, newest_first
from relay.api.recordings import RecordingOut, recording_out
from relay.api.routing import Context, Router
from relay.api.schema import OutModel, Page, PageQuery
from relay.calls import commands
from relay.calls.event_log import log_event
from relay.calls.inbound import TRANSPORT_KEY
from relay.calls.intelligence import OVERRIDE_KEY as POST_CALL_KEY
from relay.calls.lifecycle import LIVE, STATUSES, transition
from relay.calls.media import MEDIA, LiveCall
from relay.calls.outbound import DIALLER
from relay.calls.recovery import lock_call
from relay.errors import Conflict, NotFound
from relay.events.writing import writing
from relay.store.models import Call, Number

router = Router()
TAG = "Calls"

DETAIL_EVENTS = 100
# How long POST /end waits for the engine to record the end of a call it runs.
ENGINE_END_SECONDS = 10.0
HOLDER_POLL_SECONDS = 0.02
ALREADY_ENDED = "The call has already ended ({status})."


class CallOut(OutModel):
    id: str
    object: Literal["call"] = "call"
    agent_id: str | None
    number_id: str | None
    direction: str
    connection_type: str
    from_: str | None = Field(alias="from")
    to: str | None
    status: str
    failure_reason: str | None
    answered_by: Literal["human", "machine", "unknown"] | None = Field(
        description="Who picked up an outbound call, by the carrier's answering-machine "
        "detection (asked when the agent has `voicemail`); null when not asked or not known yet."
    )
    voice_mode: str
    metadata: dict[str, Any]
    variables: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None


class CallDetail(CallOut):
    agent: dict[str, Any] = Field(description="The agent's settings as this call froze them.")
    transcript: TranscriptOut
    recording: RecordingOut
    metrics: MetricsOut
    events: list[CallEventOut] = Field(description=f"The first {DETAIL_EVENTS} events.")


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class CallFilters(PageQuery):
    agent_id: str | None = Field(default=None, max_length=60)
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    direction: Literal["inbound", "outbound"] | None = None
    created_after: datetime | None = Field(default=None, description="ISO 8601; UTC if no zone.")
    created_before: datetime | None = Field(default=None, description="ISO 8601; UTC if no zone.")

    _zone = field_validator("created_after", "created_before")(_utc)


class CallQuery(CallFilters):
    number_id: str | None = Field(default=None, max_length=60)


def call_out(call: Call, cls: type[CallOut] = CallOut, **extra: Any) -> Any:
    return cls(
        id=call.id,
        agent_id=call.agent_id,
        number_id=call.number_id,
        direction=call.direction,
        connection_type=call.connection_type,
        from_=call.from_number,
        to=call.to_number,
        status=call.status,
        failure_reason=call.failure_reason,
        answered_by=call.answered_by,
        voice_mode=call.voice_mode,
        metadata=call.call_metadata or {},
        variables=(call.agent_snapshot or {}).get("variables") or {},
        created_at=call.created_at,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_seconds=duration_seconds(call),
        **extra,
    )


# --- read ----------------------------------------------------------------------------------


async def load_call(ctx: Context, session: AsyncSession, call_id: str) -> Call:
    call: Call | None = (
        await session.execute(
            select(Call).where(Call.id == call_id, Call.project_id == ctx.project_id)
        )
    ).scalar_one_or_none()
    if call is None:
        raise NotFound(f"No call {call_id!r} in this project.")
    return call


async def _page(ctx: Context, stmt: Select[Any], query: PageQuery) -> Page[CallOut]:
    stmt = newest_first(stmt, Call.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[CallOut], call_out)


def _filtered(ctx: Context, query: CallFilters) -> Select[Any]:
    stmt = select(Call).where(Call.project_id == ctx.project_id)
    if query.agent_id:
        stmt = stmt.where(Call.agent_id == query.agent_id)
    if isinstance(query, CallQuery) and query.number_id:
        stmt = stmt.where(Call.number_id == query.number_id)
    if query.status:
        stmt = stmt.where(Call.status == query.status)
    if query.direction:
        stmt = stmt.where(Call.direction == query.direction)
    if query.created_after is not None:
        stmt = stmt.where(Call.created_at > query.created_after)
    if query.created_before is not None:
        stmt = stmt.where(Call.created_at < query.created_before)
    return stmt


@router.route(
    "GET",
    "/v1/calls",
    summary="List calls",
    tag=TAG,
    query=CallQuery,
    response=Page[CallOut],
    errors=(401, 403, 422, 429),
)
async def list_calls(ctx: Context, query: CallQuery) -> Page[CallOut]:
    """Newest first. Pass ``nextCursor`` back as ``cursor`` for the next page."""
    return await _page(ctx, _filtered(ctx, query), query)


@router.route(
    "GET",
    "/v1/calls/active",
    summary="List calls that have not ended",
    tag=TAG,
    query=CallQuery,
    response=Page[CallOut],
    errors=(401, 403, 422, 429),
)
async def list_active_calls(ctx: Context, query: CallQuery) -> Page[CallOut]:
    """Calls ``queued``, ``connecting``, ``ringing`` or ``in_progress``; newest first."""
    return await _page(ctx, _filtered(ctx, query).where(Call.status.in_(LIVE)), query)


@router.route(
    "GET",
    "/v1/numbers/{number_id}/calls",
    summary="List a number's calls",
    tag=TAG,
    query=CallFilters,
    response=Page[CallOut],
    errors=(401, 403, 404, 422, 429),
)
async def list_number_calls(ctx: Context, query: CallFilters) -> Page[CallOut]:
    """Calls to or from this number, newest first (also for a number since released)."""
    number_id = ctx.path("number_id")
    async with ctx.state.db.session() as session:
        found = await session.scalar(
            select(Number.id).where(Number.id == number_id, Number.project_id == ctx.project_id)
        )
    if found is None:
        raise NotFound(f"No number {number_id!r} in this project.")
    return await _page(ctx, _filtered(ctx, query).where(Call.number_id == number_id), query)


def _public_snapshot(call: Call) -> dict[str, Any]:
    hidden = {"webhook_secret", "variables", TRANSPORT_KEY, POST_CALL_KEY}
    return {to_camel(k): v for k, v in (call.agent_snapshot or {}).items() if k not in hidden}


@router.route(
    "GET",
    "/v1/calls/{call_id}",
    summary="Get a call with its transcript, metrics and events",
    tag=TAG,
    response=CallDetail,
    errors=(401, 403, 404, 429),
)
async def get_call(ctx: Context) -> CallDetail:
    async with ctx.state.db.session() as session:
        call = await load_call(ctx, session, ctx.path("call_id"))
        spoken = await call_log.transcript(session, call.id)
        measured = await call_log.metrics(session, call)
        events = await call_log.first_events(session, call.id, DETAIL_EVENTS)
        recording = await recording_out(ctx.state, session, call)
    detail: CallDetail = call_out(
        call,
        CallDetail,
        agent=_public_snapshot(call),
        transcript=spoken,
        recording=recording,
        metrics=measured,
        events=events,
    )
    return detail


@router.route(
    "GET",
    "/v1/calls/{call_id}/transcript",
    summary="Get a call's transcript",
    tag=TAG,
    response=TranscriptOut,
    errors=(401, 403, 404, 429),
)
async def get_transcript(ctx: Context) -> TranscriptOut:
    """Segments in order, and the same as plain text (``Caller: ...`` / ``Agent: ...``)."""
    async with ctx.state.db.session() as session:
        call = await load_call(ctx, session, ctx.path("call_id"))
        return await call_log.transcript(session, call.id)


@router.route(
    "GET",
    "/v1/calls/{call_id}/metrics",
    summary="Get a call's latency metrics",
    tag=TAG,
    response=MetricsOut,
    errors=(401, 403, 404, 429),
)
async def get_metrics(ctx: Context) -> MetricsOut:
    """Per-turn latency breakdown and, per stage, count, mean, p50, p95 and max (ms)."""
    async with ctx.state.db.session() as session:
        call = await load_call(ctx, session, ctx.path("call_id"))
        return await call_log.metrics(session, call)


@router.route(
    "GET",
    "/v1/calls/{call_id}/events",
    summary="List a call's event log",
    tag=TAG,
    query=EventQuery,
    response=Page[CallEventOut],
    errors=(401, 403, 404, 422, 429),
)
async def list_call_events(ctx: Context, query: EventQuery) -> Page[CallEventOut]:
    """Oldest first: lifecycle transitions, telephony, webhook and engine events."""
    async with ctx.state.db.session() as session:
        call = await load_call(ctx, session, ctx.path("call_id"))
        return await call_log.events_page(session, call.id, query)


# --- end -----------------------------------------------------------------------------------


def _live_here(ctx: Context, call_id: str) -> LiveCall | None:
    """The voice engine's call ``call_id`` if this process runs it."""
    media = ctx.request.app.get(MEDIA)
    return media.live.get(call_id) if media is not None else None


async def _ask_holder(ctx: Context, call_id: str) -> bool:
    """If another node runs the call, ask it to end it and wait (a while) until it has:
    then its end is recorded as the holder saw it. False if no other node runs it."""
    db = ctx.state.db
    if db.is_sqlite:
        return False
    async with writing(db) as session:
        call = await load_call(ctx, session, call_id)
        node = await commands.holder(session, call_id)
        if (
            call.status not in LIVE
            or node is None
            or node == ctx.state.settings.effective_node_id()
        ):
            return False
        await commands.send(session, node, call_id, commands.END)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ENGINE_END_SECONDS
    while loop.time() < deadline:
        await asyncio.sleep(HOLDER_POLL_SECONDS)
        async with db.session() as session:
            status = await session.scalar(select(Call.status).where(Call.id == call_id))
        if status not in LIVE:
            break
    return True  # still live: the holder is gone or stuck; the caller below ends it


@router.route(
    "POST",
    "/v1/calls/{call_id}/end",
    summary="End a call",
    tag=TAG,
    response=CallOut,
    errors=(401, 403, 404, 409, 429),
)
async def end_call(ctx: Context) -> CallOut:
    """A call in progress ends ``completed``; one not yet answered ends ``failed`` with
    reason ``canceled``. 409 ``call_already_ended`` if it had ended."""
    call_id = ctx.path("call_id")
    live = _live_here(ctx, call_id)
    dialler = ctx.request.app[DIALLER]
    ended_here = False
    if live is not None or dialler.dialling(call_id):
        # Running in this process: let the engine (or the dialler) end it and record how.
        # Not while holding the call's lock: they write to it.
        async with ctx.state.db.session() as session:
            call = await load_call(ctx, session, call_id)
        if call.status not in LIVE:
            raise Conflict(ALREADY_ENDED.format(status=call.status), code="call_already_ended")
        if live is not None:
            await live.handle.end("completed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.recorded.wait(), ENGINE_END_SECONDS)
        else:
            await dialler.cancel(call_id, "canceled")
        ended_here = True
    elif await _ask_holder(ctx, call_id):
        ended_here = True
    async with writing(ctx.state.db) as session:
        locked = await lock_call(session, call_id, ctx.project_id)
        if locked is None:
            raise NotFound(f"No call {call_id!r} in this project.")
        if locked.status in LIVE:
            await log_event(session, call_id, "lifecycle", "Ended through the API.")
            if locked.status == "in_progress":
                await transition(session, locked, "completed")
            else:
                await transition(session, locked, "failed", reason="canceled")
        elif not ended_here:
            raise Conflict(ALREADY_ENDED.format(status=locked.status), code="call_already_ended")
        result: CallOut = call_out(locked)
    return result
