"""``/v1/calls/{id}/summary`` and ``/v1/calls/{id}/reprocess``: post-call intelligence."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.agent_settings import PostCallConfig
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.calls import intelligence
from relay.calls.recovery import lock_call
from relay.errors import BadRequest, NotFound, invalid_field
from relay.store.models import Call, CallAnalysis

router = Router()
TAG = "Calls"
NOT_COMPLETED = "Only a completed call can be analysed; this one is {status}."
NOTHING_TO_DO = "This postCall asks for nothing: turn on at least one part."


class ReprocessBody(APIModel):
    post_call: PostCallConfig | None = Field(
        default=None,
        description="Run this configuration instead of the call's (it replaces it whole; "
        "parts left out take their defaults: summary on, the rest off).",
    )


class Verdict(OutModel):
    criterion: str
    passed: bool
    score: int = Field(description="0 (not met at all) to 10 (fully met).")
    reasoning: str


class AnalysisError(OutModel):
    task: str = Field(description="analysis | summary | sentiment | extraction | evaluation")
    code: str
    message: str


class CallAnalysisOut(OutModel):
    call_id: str
    object: Literal["call.analysis"] = "call.analysis"
    status: Literal["not_requested", "pending", "completed", "failed"] = Field(
        description="not_requested: the call has ended without a postCall config (or has not "
        "ended yet)."
    )
    summary: str | None = None
    sentiment: Literal["positive", "neutral", "negative"] | None = None
    extraction: dict[str, Any] | None = Field(
        default=None, description="Matches the structuredExtraction schema."
    )
    evaluation: list[Verdict] | None = None
    errors: list[AnalysisError] = Field(default_factory=list)
    attempts: int = 0
    model: str | None = Field(default=None, description="The LLM that produced it.")
    duration_ms: int | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


def analysis_out(call_id: str, row: CallAnalysis | None) -> CallAnalysisOut:
    if row is None:
        return CallAnalysisOut(call_id=call_id, status="not_requested")
    return CallAnalysisOut(
        call_id=call_id,
        status=row.status,
        summary=row.summary,
        sentiment=row.sentiment,
        extraction=row.extraction,
        evaluation=[Verdict.model_validate(v) for v in row.evaluation or []]
        if row.evaluation is not None
        else None,
        errors=[AnalysisError.model_validate(e) for e in row.errors or []],
        attempts=row.attempts,
        model=row.model,
        duration_ms=row.duration_ms,
        created_at=row.created_at,
        completed_at=row.completed_at,
    )


async def _call(ctx: Context, session: AsyncSession, call_id: str) -> Call:
    call: Call | None = await session.scalar(
        select(Call).where(Call.id == call_id, Call.project_id == ctx.project_id)
    )
    if call is None:
        raise NotFound(f"No call {call_id!r} in this project.")
    return call


@router.route(
    "GET",
    "/v1/calls/{call_id}/summary",
    summary="Get a call's post-call analysis",
    tag=TAG,
    response=CallAnalysisOut,
    errors=(401, 403, 404, 429),
)
async def get_summary(ctx: Context) -> CallAnalysisOut:
    """Summary, sentiment, structured extraction and evaluation, as the agent's ``postCall``
    asked for them. ``status`` is ``pending`` until the analysis has run (the relay also sends
    ``call.analyzed`` then)."""
    call_id = ctx.path("call_id")
    async with ctx.state.db.session() as session:
        call = await _call(ctx, session, call_id)
        row = await session.get(CallAnalysis, call.id)
    return analysis_out(call_id, row)


@router.route(
    "POST",
    "/v1/calls/{call_id}/reprocess",
    summary="Run a call's post-call analysis again",
    tag=TAG,
    response=CallAnalysisOut,
    status=202,
    body=ReprocessBody,
    body_optional=True,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def reprocess(ctx: Context, body: ReprocessBody | None) -> CallAnalysisOut:
    """Queues the analysis again from the transcript and answers ``pending``: with the
    body's ``postCall`` when one is sent, else with the call's (the agent's merged with the
    call's override; a summary alone if it had none). 400 ``call_not_completed`` unless the
    call completed; 422 ``empty_post_call`` for a ``postCall`` that asks for nothing."""
    call_id = ctx.path("call_id")
    given = body.post_call if body is not None else None
    config: dict[str, Any] | None = None
    if given is not None:
        config = given.model_dump()
        if intelligence.Plan.from_config(config).empty:
            raise invalid_field("postCall", NOTHING_TO_DO, "empty_post_call")
    async with ctx.state.db.session() as session:
        await _call(ctx, session, call_id)
        call = await lock_call(session, call_id, ctx.project_id)
        assert call is not None
        if call.status != "completed":
            raise BadRequest(NOT_COMPLETED.format(status=call.status), code="call_not_completed")
        if config is None:
            config = intelligence.effective_config(call.agent_snapshot or {}) or {"summary": True}
        row = await intelligence.schedule(session, call, config)
        out = analysis_out(call_id, row)
    worker = ctx.request.app.get(intelligence.INTELLIGENCE)
    if worker is not None:
        worker.wake()
    return out
