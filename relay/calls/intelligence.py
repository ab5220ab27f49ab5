"""Post-call intelligence: a summary, the caller's sentiment, structured extraction against a
JSON schema, and evaluation against criteria, from the call's transcript.

What runs is the agent's ``postCall`` as the call froze it (``Call.agent_snapshot``), with a
per-call ``post_call_override`` in the snapshot merged on top. When a call completes with
anything to do, :func:`enqueue` writes a ``pending`` :class:`CallAnalysis` row in the SAME
transaction (so a crash cannot lose it); :class:`IntelligenceWorker`, started with the app,
claims due rows (a conditional UPDATE: one node wins, on SQLite and PostgreSQL alike), runs
them on the built-in LLM at background priority (a live call's turn always goes first), and
stores the results with a ``call.analyzed`` lifecycle event, again in one transaction. A
backend failure is retried on ``RELAY_POST_CALL_RETRY_SCHEDULE``; a model answer that breaks
the schema is asked again once, then reported in ``errors`` without failing the rest.

Structured output is constrained where the backend can (llama.cpp grammar from the schema,
``response_format: json_schema`` for OpenAI-compatible servers) and validated with
``jsonschema`` either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jsonschema
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hosted_llm import ChatBackend, LLMError, Message, Priority, TextDelta
from relay.agent_config import AgentConfig
from relay.calls.event_log import log_event
from relay.calls.transcripts import transcript_text
from relay.config import Settings
from relay.events import emit
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, CallAnalysis, TranscriptSegment, utcnow

log = get_logger("relay.calls.intelligence")

PENDING, COMPLETED, FAILED = "pending", "completed", "failed"
SENTIMENTS = ("positive", "neutral", "negative")
LEASE = timedelta(minutes=10)
TRANSCRIPT_CHARS = 9000  # a small local model's context holds about this much, plus the task
ANALYST = (
    "You analyse phone calls between a caller and an AI voice agent. Base every answer only "
    "on the transcript below; never invent facts.\n\nTranscript:\n"
)
SUMMARY_TASK = "Summarise this call in two or three sentences: who called, why, and the outcome."
SENTIMENT_TASK = (
    "How did the caller feel during this call overall? Answer with JSON: "
    '{"sentiment": "positive" | "neutral" | "negative"}.'
)
SENTIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": list(SENTIMENTS)}},
    "required": ["sentiment"],
    "additionalProperties": False,
}
EXTRACTION_TASK = (
    "Extract the information below from the call as JSON matching this JSON schema. Use null "
    "for anything the call did not say.\n\nSchema:\n{schema}"
)
EVALUATION_TASK = (
    "Did the agent meet this criterion in the call?\n\nCriterion: {criterion}\n\nAnswer with "
    'JSON: {{"passed": true|false, "score": 0-10 (how well it was met), "reasoning": "one '
    'sentence"}}.'
)
EVALUATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "passed": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "reasoning": {"type": "string"},
    },
    "required": ["passed", "score", "reasoning"],
    "additionalProperties": False,
}
NO_CONVERSATION = "No one spoke on this call."
OVERRIDE_KEY = "post_call_override"  # the call's own postCall, in its agent snapshot


# --------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Plan:
    """What to work out for one call."""

    summary: bool = True
    sentiment: bool = False
    schema: dict[str, Any] | None = None
    instructions: str | None = None
    criteria: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.summary or self.sentiment or self.schema or self.criteria)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Plan:
        extraction = config.get("structured_extraction") or {}
        evaluation = config.get("evaluation") or {}
        return cls(
            summary=bool(config.get("summary", True)),
            sentiment=bool(config.get("sentiment", False)),
            schema=extraction.get("schema") or extraction.get("schema_"),
            instructions=extraction.get("instructions"),
            criteria=tuple(evaluation.get("criteria") or ()),
        )


def effective_config(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """The agent's ``post_call`` with the call's ``post_call_override`` merged over it (a key
    set to null in the override turns that part off)."""
    base = AgentConfig.from_stored(snapshot).post_call
    override = snapshot.get(OVERRIDE_KEY)
    if base is None and override is None:
        return None
    return {**(base or {}), **(override or {})}


async def enqueue(session: AsyncSession, call: Call) -> CallAnalysis | None:
    """Queue the analysis of a call that just completed, in the caller's transaction."""
    config = effective_config(call.agent_snapshot or {})
    if config is None or Plan.from_config(config).empty:
        return None
    return await schedule(session, call, config)


async def schedule(session: AsyncSession, call: Call, config: dict[str, Any]) -> CallAnalysis:
    """Create or reset ``call``'s analysis as ``pending`` and due now."""
    now = utcnow()
    row = await session.get(CallAnalysis, call.id)
    if row is None:
        row = CallAnalysis(call_id=call.id, project_id=call.project_id, created_at=now)
        session.add(row)
    row.status = PENDING
    row.config = config
    row.summary = row.sentiment = row.model = None
    row.extraction = row.evaluation = row.errors = None
    row.attempts = 0
    row.next_attempt_at = now
    row.claimed_by = None
    row.duration_ms = None
    row.completed_at = None
    row.updated_at = now
    return row


async def release_claims(db: Database, node_id: str) -> int:
    """Make the analyses ``node_id`` (a dead node) was running due now, for another node."""
    async with db.session() as session:
        result = await session.execute(
            update(CallAnalysis)
            .where(CallAnalysis.status == PENDING, CallAnalysis.claimed_by == node_id)
            .values(claimed_by=None, next_attempt_at=utcnow())
        )
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------------- running


@dataclass(slots=True)
class Result:
    summary: str | None = None
    sentiment: str | None = None
    extraction: dict[str, Any] | None = None
    evaluation: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, task: str, code: str, message: str) -> None:
        self.errors.append({"task": task, "code": code, "message": message})


def analysis_text(segments: list[TranscriptSegment]) -> str:
    """The transcript as the analysis model reads it: its head and tail when too long."""
    text = transcript_text(segments)
    if len(text) > TRANSCRIPT_CHARS:
        head = TRANSCRIPT_CHARS // 3
        text = text[:head] + "\n[...]\n" + text[-(TRANSCRIPT_CHARS - head) :]
    return text


class Analyst:
    """Runs one call's plan on a backend. Every task starts with the same system message
    (instructions and transcript), so a local model reads the transcript once per job."""

    def __init__(self, backend: ChatBackend, transcript: str, *, model: str | None = None) -> None:
        self.backend = backend
        self.model = model
        self.system: Message = {"role": "system", "content": ANALYST + transcript}

    async def run(self, plan: Plan) -> Result:
        result = Result()
        if plan.summary:
            result.summary = (await self._ask(SUMMARY_TASK, max_tokens=160)).strip()
        if plan.sentiment:
            value = await self._json("sentiment", SENTIMENT_TASK, SENTIMENT_SCHEMA, result)
            result.sentiment = value["sentiment"] if value is not None else None
        if plan.schema is not None:
            task = EXTRACTION_TASK.format(schema=json.dumps(plan.schema))
            if plan.instructions:
                task += "\n\n" + plan.instructions
            result.extraction = await self._json("extraction", task, plan.schema, result, 400)
        if plan.criteria:
            result.evaluation = []
            for criterion in plan.criteria:
                task = EVALUATION_TASK.format(criterion=criterion)
                value = await self._json("evaluation", task, EVALUATION_SCHEMA, result)
                verdict = value or {"passed": False, "score": 0, "reasoning": "not evaluated"}
                result.evaluation.append({"criterion": criterion, **verdict})
        return result

    async def _ask(
        self,
        task: str,
        *,
        max_tokens: int,
        schema: dict[str, Any] | None = None,
        history: list[Message] | None = None,
    ) -> str:
        messages = [self.system, {"role": "user", "content": task}, *(history or [])]
        text = ""
        async for delta in self.backend.stream(
            messages,
            temperature=0.0,
            max_tokens=max_tokens,
            json_schema=schema,
            model=self.model,
            priority=Priority.BACKGROUND,
        ):
            if isinstance(delta, TextDelta):
                text += delta.text
        return text

    async def _json(
        self,
        name: str,
        task: str,
        schema: dict[str, Any],
        result: Result,
        max_tokens: int = 200,
    ) -> Any:
        """An answer that validates against ``schema``: asked again once with the reason if
        the first one does not; ``None`` (and an entry in ``errors``) if neither does."""
        history: list[Message] = []
        problem = ""
        for _ in range(2):
            text = await self._ask(task, max_tokens=max_tokens, schema=schema, history=history)
            try:
                value = json.loads(_strip_fence(text))
                jsonschema.validate(value, schema)
                return value
            except json.JSONDecodeError as exc:
                problem = f"the answer is not JSON ({exc.msg})"
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "the answer"
                problem = f"{where}: {exc.message}"
            history = [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"That is invalid: {problem}. Answer again."},
            ]
        result.error(name, "invalid_output", f"the model's answer broke the schema: {problem}")
        return None


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    return text.strip()


def _quiet(plan: Plan) -> Result:
    """The results for a call in which nobody said anything."""
    result = Result(summary=NO_CONVERSATION if plan.summary else None)
    if plan.sentiment:
        result.sentiment = "neutral"
    if plan.schema is not None:
        result.error("extraction", "no_transcript", NO_CONVERSATION)
    if plan.criteria:
        result.evaluation = [
            {"criterion": c, "passed": False, "score": 0, "reasoning": NO_CONVERSATION}
            for c in plan.criteria
        ]
    return result


def analysis_payload(call: Call, row: CallAnalysis) -> dict[str, Any]:
    """``call.analyzed``'s data."""
    return {
        "callId": call.id,
        "agentId": call.agent_id,
        "status": row.status,
        "summary": row.summary,
        "sentiment": row.sentiment,
        "extraction": row.extraction,
        "evaluation": row.evaluation,
        "errors": row.errors or [],
        "metadata": call.call_metadata,
    }


# --------------------------------------------------------------------------------- the worker


class IntelligenceWorker:
    """Claims due analyses and runs them, one at a time (they share one model)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        backend: Callable[[], ChatBackend],
    ) -> None:
        self.db = db
        self.settings = settings
        self.backend = backend
        self.node_id = settings.effective_node_id()
        self.schedule = settings.post_call_schedule()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._job: asyncio.Task[Any] | None = None  # the LLM work of the running analysis
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="post-call-worker")

    async def stop(self) -> None:
        """Stop between database steps, never inside one: a task cancelled in the middle of
        a query leaves its pooled connection half used, and the engine is disposed next.
        A running analysis's LLM work is cancelled; its claim runs out and it is retried."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        if self._job is not None:
            self._job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                ran = await self.run_once()
            except Exception as exc:  # the database was away: try again next round
                log.warning("post_call_cycle_failed", error=repr(exc))
                ran = False
            if ran or self._stopping:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.post_call_poll_seconds):
                    await self._wake.wait()

    async def run_once(self) -> bool:
        """Claim one due analysis and run it; False if none was due."""
        call_id = await self._claim()
        if call_id is None:
            return False
        await self._run(call_id)
        return True

    async def _claim(self) -> str | None:
        now = utcnow()
        async with self.db.session() as session:
            due = await session.scalars(
                select(CallAnalysis.call_id)
                .where(CallAnalysis.status == PENDING, CallAnalysis.next_attempt_at <= now)
                .order_by(CallAnalysis.next_attempt_at)
                .limit(5)
            )
            for call_id in due.all():
                won = await session.execute(
                    update(CallAnalysis)
                    .where(
                        CallAnalysis.call_id == call_id,
                        CallAnalysis.status == PENDING,
                        CallAnalysis.next_attempt_at <= now,
                    )
                    .values(
                        attempts=CallAnalysis.attempts + 1,
                        claimed_by=self.node_id,
                        next_attempt_at=now + LEASE,
                        updated_at=now,
                    )
                )
                if getattr(won, "rowcount", 0) == 1:
                    return str(call_id)
        return None

    async def _run(self, call_id: str) -> None:
        async with self.db.session() as session:
            call = await session.get(Call, call_id)
            row = await session.get(CallAnalysis, call_id)
            segments = list(
                await session.scalars(
                    select(TranscriptSegment)
                    .where(TranscriptSegment.call_id == call_id)
                    .order_by(TranscriptSegment.seq, TranscriptSegment.id)
                )
            )
        if call is None or row is None:
            return
        plan = Plan.from_config(row.config)
        backend = self.backend()
        model = AgentConfig.from_stored(call.agent_snapshot or {}).model or None
        started = time.perf_counter()
        try:
            spoken = [s for s in segments if s.speaker in ("user", "agent")]
            if spoken:
                analyst = Analyst(backend, analysis_text(segments), model=model)
                self._job = asyncio.create_task(analyst.run(plan), name=f"post-call:{call_id}")
                try:
                    result = await self._job
                except asyncio.CancelledError:
                    if self._stopping:
                        return  # shutdown: the claim runs out and the job is retried
                    raise
                finally:
                    self._job = None
            else:
                result = _quiet(plan)
        except LLMError as exc:
            await self._failed(call_id, row.attempts, exc.code, exc.message)
            return
        except Exception as exc:
            log.error("post_call_crashed", call_id=call_id, error=repr(exc))
            await self._failed(call_id, row.attempts, "internal_error", repr(exc)[:300])
            return
        elapsed = int((time.perf_counter() - started) * 1000)
        async with self.db.session() as session:
            call = await session.get(Call, call_id)
            row = await session.get(CallAnalysis, call_id)
            if call is None or row is None or row.claimed_by != self.node_id:
                return  # reprocessed (or deleted) while we worked: the new job wins
            now = utcnow()
            row.status = COMPLETED
            row.summary = result.summary
            row.sentiment = result.sentiment
            row.extraction = result.extraction
            row.evaluation = result.evaluation
            row.errors = result.errors or None
            row.model = backend.name
            row.duration_ms = elapsed
            row.completed_at = row.updated_at = now
            row.claimed_by = None
            await log_event(
                session,
                call_id,
                "post_call",
                "post-call analysis completed"
                + (f" with {len(result.errors)} error(s)" if result.errors else ""),
                level="warning" if result.errors else "info",
                data={"durationMs": elapsed, "model": backend.name, "errors": result.errors},
            )
            await emit(
                session,
                project_id=call.project_id,
                type="call.analyzed",
                data=analysis_payload(call, row),
                ordering_key=call.id,
            )
        log.info("post_call_completed", call_id=call_id, ms=elapsed, errors=len(result.errors))

    async def _failed(self, call_id: str, attempts: int, code: str, message: str) -> None:
        async with self.db.session() as session:
            call = await session.get(Call, call_id)
            row = await session.get(CallAnalysis, call_id)
            if call is None or row is None or row.claimed_by != self.node_id:
                return
            now = utcnow()
            row.claimed_by = None
            row.updated_at = now
            row.errors = [{"task": "analysis", "code": code, "message": message}]
            if attempts < len(self.schedule):
                row.next_attempt_at = now + timedelta(seconds=self.schedule[attempts])
                await log_event(
                    session,
                    call_id,
                    "post_call",
                    f"post-call analysis attempt {attempts} failed ({code}); will retry",
                    level="warning",
                    data={"code": code, "message": message},
                )
                return
            row.status = FAILED
            row.completed_at = now
            await log_event(
                session,
                call_id,
                "post_call",
                f"post-call analysis failed after {attempts} attempts: {message}",
                level="error",
                data={"code": code, "message": message},
            )
            await emit(
                session,
                project_id=call.project_id,
                type="call.analyzed",
                data=analysis_payload(call, row),
                ordering_key=call.id,
            )
        log.warning("post_call_failed", call_id=call_id, code=code, attempts=attempts)


# --------------------------------------------------------------------------------- the app

INTELLIGENCE: web.AppKey[IntelligenceWorker] = web.AppKey("relay_intelligence", IntelligenceWorker)
