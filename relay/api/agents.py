"""``/v1/agents``: what answers a number, and how (the developer's webhook, or the hosted LLM)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    field_validator,
)
from sqlalchemy import bindparam, select, update

from relay.agent_config import DEFAULT_LANGUAGE, STORED_KEYS, AgentConfig
from relay.api.agent_settings import (
    MAX_DESTINATIONS,
    AgentTool,
    AgentToolOut,
    BackchannelList,
    LanguageKey,
    PostCallConfig,
    TransferDestination,
    VoicemailSettings,
    VoiceMode,
    unique_tool_names,
)
from relay.api.compliance import CallingHours, CallingHoursOut
from relay.api.limits import Metadata
from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, Deleted, OutModel, Page, PageQuery
from relay.api.voices import check_speech
from relay.errors import NotFound, ValidationFailed, invalid_field
from relay.ids import new_id
from relay.store.models import Agent, Number, utcnow
from relay.urls import check_webhook_url

router = Router()
TAG = "Agents"
WEBHOOK_URL_REQUIRED = "webhookUrl is required when voiceMode is 'webhook'."
SYSTEM_PROMPT_REQUIRED = "systemPrompt is required when voiceMode is 'hosted'."


class AgentFields(APIModel):
    """Fields shared by create and update; every one optional here, defaults applied on create."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    voice_mode: VoiceMode | None = None
    webhook_url: AnyHttpUrl | None = Field(default=None, description="Where agent.message goes.")
    webhook_timeout_ms: int | None = Field(default=None, ge=5000, le=120000)
    system_prompt: str | None = Field(default=None, max_length=32000)
    greeting: str | None = Field(default=None, max_length=2000)
    first_speaker: Literal["agent", "user"] | None = None
    voice: str | None = Field(
        default=None, max_length=100, description="A voice id of GET /v1/voices."
    )
    language: str | None = Field(
        default=None,
        min_length=2,
        max_length=35,
        description="BCP 47; one of the languages of GET /v1/voices (default en-US).",
    )
    model: str | None = Field(default=None, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=1)
    interruptible: bool | None = None
    interruption_sensitivity: Literal["low", "medium", "high"] | None = Field(
        default=None,
        description="While the agent speaks: `high` lets any caller speech cut it; `medium` "
        '(default) and `low` let acknowledgements ("mhm", "okay") of up to 1.0 / 1.6 s '
        "pass without cutting it or becoming a turn.",
    )
    backchannel_words: dict[LanguageKey, BackchannelList] | None = Field(
        default=None,
        max_length=20,
        description='The acknowledgements per language (`{"en": ["mhm", ...]}`), '
        "replacing the built-in list for that language.",
    )
    unfinished_turn_ms: int | None = Field(
        default=None,
        ge=0,
        le=3000,
        description="How much longer the caller's turn waits when its transcript stops "
        'mid-sentence ("a table for ... um"): default 700, 0 ends turns by silence alone.',
    )
    speculative_turns: bool | None = Field(
        default=None,
        description="Webhook mode: send the turn on the caller's early transcript, before "
        "endpointing confirms it (`data.speculative: true`); if the caller goes on, that "
        "reply is never spoken and the next request names it in `data.supersedes`. "
        "Default false; hosted mode always does this (its tools wait for the turn).",
    )
    max_duration_seconds: int | None = Field(default=None, ge=60, le=7200)
    inactivity_timeout_seconds: int | None = Field(default=None, ge=10, le=300)
    inactivity_action: Literal["reprompt", "hangup"] | None = None
    recording_enabled: bool | None = None
    post_call: PostCallConfig | None = None
    metadata: Metadata | None = None
    stt: Literal["whisper", "whisper-multilingual", "pocketsphinx"] | None = Field(
        default=None, description="Speech-to-text engine; default from RELAY_STT."
    )
    tts: Literal["piper", "espeak"] | None = Field(
        default=None, description="Text-to-speech engine; default from RELAY_TTS."
    )
    fallback_text: str | None = Field(
        default=None, max_length=500, description="Spoken when the webhook fails a turn."
    )
    filler_after_ms: int | None = Field(
        default=None,
        ge=200,
        le=10000,
        description="Speak fillerText once if the first chunk is late.",
    )
    filler_text: str | None = Field(default=None, max_length=200)
    max_webhook_failures: int | None = Field(
        default=None, ge=1, le=20, description="Consecutive failed turns before the call ends."
    )
    help_text: str | None = Field(default=None, max_length=320, description="SMS HELP reply.")
    transfer_destinations: list[TransferDestination] | None = Field(
        default=None,
        max_length=MAX_DESTINATIONS,
        description=(
            "Where the webhook's `transfer` may send a call; without any, transfers are refused "
            "(the call goes on and its event log says so)."
        ),
    )
    calling_hours: CallingHours | None = Field(
        default=None,
        description="When its outbound calls may ring (callee local time); else the project's.",
    )
    voicemail: VoicemailSettings | None = Field(
        default=None,
        description="Outbound calls ask the carrier to detect answering machines; this is "
        "what happens when one answers. Unset: no detection (`answeredBy` stays null).",
    )
    tools: list[AgentTool] | None = Field(
        default=None, max_length=32, description="Functions the hosted LLM may call."
    )

    _unique_tools = field_validator("tools")(unique_tool_names)


class AgentCreate(AgentFields):
    name: str = Field(min_length=1, max_length=200)


class AgentUpdate(AgentFields):
    """Send only what changes; ``null`` clears an optional field."""


class AgentOut(OutModel):
    id: str
    object: Literal["agent"] = "agent"
    name: str
    voice_mode: VoiceMode
    webhook_url: str | None
    webhook_timeout_ms: int
    system_prompt: str | None
    greeting: str | None
    first_speaker: str
    voice: str | None
    language: str
    model: str | None
    temperature: float | None
    interruptible: bool
    interruption_sensitivity: str
    backchannel_words: dict[str, list[str]] | None
    unfinished_turn_ms: int
    speculative_turns: bool
    max_duration_seconds: int
    inactivity_timeout_seconds: int
    inactivity_action: str
    recording_enabled: bool
    post_call: dict[str, Any] | None
    metadata: dict[str, Any]
    stt: str | None
    tts: str | None
    fallback_text: str | None
    filler_after_ms: int | None
    filler_text: str | None
    max_webhook_failures: int
    help_text: str | None
    transfer_destinations: list[str] | None
    calling_hours: CallingHoursOut | None
    voicemail: dict[str, Any] | None
    tools: list[AgentToolOut] | None
    number_ids: list[str]
    created_at: datetime
    updated_at: datetime


class AgentWithSecret(AgentOut):
    webhook_secret: str = Field(description="Shown only here and by the rotate endpoint.")


class AgentQuery(PageQuery):
    voice_mode: VoiceMode | None = None


class RotateSecret(APIModel):
    grace_seconds: int | None = Field(
        default=None,
        ge=0,
        le=7 * 24 * 3600,
        description="Seconds the old secret still signs (default: server setting).",
    )


class RotatedSecret(OutModel):
    id: str
    webhook_secret: str
    previous_secret_expires_at: datetime | None


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _to_out(agent: Agent, number_ids: list[str], cls: type[AgentOut] = AgentOut) -> Any:
    cfg = AgentConfig.from_stored(agent.config).stored()
    extra = {"webhook_secret": agent.webhook_secret} if cls is AgentWithSecret else {}
    return cls(
        id=agent.id,
        name=agent.name,
        voice_mode=agent.voice_mode,
        webhook_url=agent.webhook_url,
        webhook_timeout_ms=agent.webhook_timeout_ms,
        number_ids=number_ids,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
        **cfg,
        **extra,
    )


SPEECH_KEYS = {"voice", "language", "stt", "tts"}


def check_mode(
    ctx: Context,
    mode: str,
    webhook_url: str | None,
    system_prompt: str | None,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    problems = []
    if webhook_url is not None:
        reason = check_webhook_url(
            webhook_url, allow_private=ctx.state.settings.allow_private_webhooks
        )
        if reason:
            problems.append(invalid_field("webhookUrl", reason, "invalid_webhook_url"))
    if mode == "webhook" and not webhook_url:
        problems.append(invalid_field("webhookUrl", WEBHOOK_URL_REQUIRED, "missing_field"))
    if mode == "hosted" and not system_prompt:
        problems.append(invalid_field("systemPrompt", SYSTEM_PROMPT_REQUIRED, "missing_field"))
    for index, tool in enumerate(tools or ()):
        reason = tool.get("url") and check_webhook_url(
            tool["url"], allow_private=ctx.state.settings.allow_private_webhooks
        )
        if reason:
            problems.append(invalid_field(f"tools.{index}.url", reason, "invalid_webhook_url"))
    if problems:
        first = problems[0]
        details = [d for p in problems for d in (p.details or [])]
        raise ValidationFailed(first.message, code=first.code, field=first.field, details=details)


# Built once: every call created reads its agent, and building the statement cost more than
# running it (bench/webhooks.py, py-spy).
_LOAD_AGENT = select(Agent).where(
    Agent.id == bindparam("agent_id"),
    Agent.project_id == bindparam("project_id"),
    Agent.deleted_at.is_(None),
)


async def load_agent(ctx: Context, session: Any, agent_id: str) -> Agent:
    agent: Agent | None = (
        await session.execute(_LOAD_AGENT, {"agent_id": agent_id, "project_id": ctx.project_id})
    ).scalar_one_or_none()
    if agent is None:
        raise NotFound(f"No agent {agent_id!r} in this project.", field="agentId")
    return agent


async def _number_ids(session: Any, agent_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {a: [] for a in agent_ids}
    if agent_ids:
        rows = await session.execute(
            select(Number.agent_id, Number.id)
            .where(Number.agent_id.in_(agent_ids), Number.released_at.is_(None))
            .order_by(Number.id)
        )
        for agent_id, number_id in rows:
            out[agent_id].append(number_id)
    return out


@router.route(
    "POST",
    "/v1/agents",
    summary="Create an agent",
    tag=TAG,
    body=AgentCreate,
    response=AgentWithSecret,
    status=201,
    errors=(400, 401, 403, 413, 415, 422, 429),
)
async def create_agent(ctx: Context, body: AgentCreate) -> AgentWithSecret:
    """The response carries ``webhookSecret``: keep it, it is not shown again."""
    given = body.model_dump(exclude_unset=True)
    mode = body.voice_mode or "webhook"
    url = str(body.webhook_url) if body.webhook_url else None
    check_mode(ctx, mode, url, body.system_prompt, given.get("tools"))
    check_speech(
        ctx.state.settings,
        voice=body.voice,
        language=body.language or DEFAULT_LANGUAGE,
        stt=body.stt,
        tts=body.tts,
    )
    config = {k: given[k] for k in STORED_KEYS if k in given and given[k] is not None}
    now = utcnow()
    agent = Agent(
        id=new_id("agt"),
        project_id=ctx.project_id,
        name=body.name,
        voice_mode=mode,
        webhook_url=url,
        webhook_secret=new_webhook_secret(),
        webhook_timeout_ms=body.webhook_timeout_ms or 30000,
        config=config,
        created_at=now,
        updated_at=now,
    )
    async with ctx.state.db.session() as session:
        session.add(agent)
        # Built before the commit: if the answer cannot be made, nothing is stored.
        result: AgentWithSecret = _to_out(agent, [], AgentWithSecret)
    return result


@router.route(
    "GET",
    "/v1/agents",
    summary="List agents",
    tag=TAG,
    query=AgentQuery,
    response=Page[AgentOut],
    errors=(401, 403, 422, 429),
)
async def list_agents(ctx: Context, query: AgentQuery) -> Page[AgentOut]:
    """Newest first. Pass ``nextCursor`` back as ``cursor`` for the next page."""
    stmt = select(Agent).where(Agent.project_id == ctx.project_id, Agent.deleted_at.is_(None))
    if query.voice_mode:
        stmt = stmt.where(Agent.voice_mode == query.voice_mode)
    stmt = newest_first(stmt, Agent.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
        numbers = await _number_ids(session, [a.id for a in window.rows])
    return window.page(Page[AgentOut], lambda a: _to_out(a, numbers[a.id]))


@router.route(
    "GET",
    "/v1/agents/{agent_id}",
    summary="Get an agent",
    tag=TAG,
    response=AgentOut,
    errors=(401, 403, 404, 429),
)
async def get_agent(ctx: Context) -> AgentOut:
    async with ctx.state.db.session() as session:
        agent = await load_agent(ctx, session, ctx.path("agent_id"))
        numbers = await _number_ids(session, [agent.id])
    result: AgentOut = _to_out(agent, numbers[agent.id])
    return result


@router.route(
    "PATCH",
    "/v1/agents/{agent_id}",
    summary="Update an agent",
    tag=TAG,
    body=AgentUpdate,
    response=AgentOut,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def update_agent(ctx: Context, body: AgentUpdate) -> AgentOut:
    """Calls already in progress keep the settings they started with; new calls use these.
    Switching ``voiceMode`` keeps every bound number bound."""
    given = body.model_dump(exclude_unset=True)
    if "name" in given and given["name"] is None:
        raise invalid_field("name", "name cannot be null.")
    async with ctx.state.db.session() as session:
        agent = await load_agent(ctx, session, ctx.path("agent_id"))
        config = {**agent.config}
        for key in STORED_KEYS:
            if key in given:
                if given[key] is None:
                    config.pop(key, None)
                else:
                    config[key] = given[key]
        mode = given.get("voice_mode") or agent.voice_mode
        url = (
            str(body.webhook_url)
            if body.webhook_url
            else (None if "webhook_url" in given else agent.webhook_url)
        )
        stored = AgentConfig.from_stored(config)
        check_mode(ctx, mode, url, stored.system_prompt, stored.tools)
        if given.keys() & SPEECH_KEYS:
            # Only when they change: an agent stored before voices were checked keeps working.
            check_speech(
                ctx.state.settings,
                voice=stored.voice,
                language=stored.language,
                stt=stored.stt,
                tts=stored.tts,
            )
        agent.name = given.get("name") or agent.name
        agent.voice_mode = mode
        agent.webhook_url = url
        if given.get("webhook_timeout_ms") is not None:
            agent.webhook_timeout_ms = given["webhook_timeout_ms"]
        agent.config = config
        agent.updated_at = utcnow()
        numbers = await _number_ids(session, [agent.id])
    result: AgentOut = _to_out(agent, numbers[agent.id])
    return result


@router.route(
    "DELETE",
    "/v1/agents/{agent_id}",
    summary="Delete an agent",
    tag=TAG,
    response=Deleted,
    errors=(401, 403, 404, 429),
)
async def delete_agent(ctx: Context) -> Deleted:
    """Its numbers stay in the project, unbound. Past calls keep their record of it."""
    async with ctx.state.db.session() as session:
        agent = await load_agent(ctx, session, ctx.path("agent_id"))
        agent.deleted_at = utcnow()
        await session.execute(
            update(Number).where(Number.agent_id == agent.id).values(agent_id=None)
        )
    return Deleted(id=agent.id, object="agent")


@router.route(
    "POST",
    "/v1/agents/{agent_id}/rotate-webhook-secret",
    summary="Rotate the webhook signing secret",
    tag=TAG,
    body=RotateSecret,
    response=RotatedSecret,
    errors=(400, 401, 403, 404, 415, 422, 429),
)
async def rotate_secret(ctx: Context, body: RotateSecret) -> RotatedSecret:
    """Returns the new secret. During the grace period each request is signed with BOTH
    secrets (Standard Webhooks allows several signatures), so receivers can switch over."""
    grace = body.grace_seconds
    if grace is None:
        grace = ctx.state.settings.webhook_secret_grace_seconds
    async with ctx.state.db.session() as session:
        agent = await load_agent(ctx, session, ctx.path("agent_id"))
        expires = utcnow() + timedelta(seconds=grace) if grace > 0 else None
        agent.previous_webhook_secret = agent.webhook_secret if expires else None
        agent.previous_webhook_secret_expires_at = expires
        agent.webhook_secret = new_webhook_secret()
        agent.updated_at = utcnow()
    return RotatedSecret(
        id=agent.id, webhook_secret=agent.webhook_secret, previous_secret_expires_at=expires
    )
