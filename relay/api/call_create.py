"""``POST /v1/calls`` and ``/v1/calls/inline``: place an outbound call, or open a
bring-your-own-telephony call (a ``joinUrl`` for your carrier's media stream or your own
raw PCM websocket), or a web call (``webrtc``: a WHIP ``joinUrl`` and a one-time token for
the page, :mod:`relay.api.webrtc`).

Publishable keys may create calls on the channels and agents they are scoped to, to the
destinations they allow, carrying what their allowances let through (:mod:`relay.auth`); what
a call is once created, and every read of it, is :mod:`relay.api.calls`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay import tokens
from relay.agent_config import STORED_DEFAULTS
from relay.api.agent_settings import (
    MAX_DESTINATIONS,
    AgentTool,
    PostCallConfig,
    TransferDestination,
    unique_tool_names,
)
from relay.api.agents import check_mode, load_agent, new_webhook_secret
from relay.api.calls import TAG, CallOut, call_out
from relay.api.limits import KEYS_SCHEMA, Metadata, cap, json_size
from relay.api.routing import Context, Router
from relay.api.schema import APIModel
from relay.api.voices import check_speech
from relay.calls.dial_queue import DIAL_QUEUE, enqueue_call
from relay.calls.inbound import (
    MEDIA_TOKEN_PURPOSE,
    MEDIA_TOKEN_TTL_SECONDS,
    WEB_TOKEN_PURPOSE,
    WEB_TOKEN_TTL_SECONDS,
    agent_snapshot,
)
from relay.calls.lifecycle import open_call
from relay.calls.media import MEDIA
from relay.calls.snapshots import freeze
from relay.errors import Forbidden, invalid_field
from relay.events.writing import writing
from relay.ids import new_id
from relay.phone import to_e164
from relay.store.models import Agent, Call, Number, utcnow
from relay.urls import media_base_url
from sms import refuse_if_opted_out

router = Router()

ConnectionType = Literal["twilio", "telnyx", "plivo", "websocket", "webrtc"]
# The channel a publishable key must allow for each way of calling.
CHANNEL_OF: dict[str, str] = {
    "phone": "phone",
    "twilio": "phone",
    "telnyx": "phone",
    "plivo": "phone",
    "websocket": "websocket",
    "webrtc": "web",
}
# The engine's rate for each kind of media (a websocket call may choose its own).
LINE_RATE = {"websocket": 16000, "webrtc": 48000}

TO_OR_CONNECTION = "Send either 'to' (an outbound phone call) or 'connectionType' (BYOT)."
FROM_NEEDS_TO = "'from' applies to outbound phone calls only."
SAMPLE_RATE_WEBSOCKET = "sampleRate applies to connectionType 'websocket' only."
NO_NUMBER = "The agent has no phone number to call from; bind one, or send 'from'."
NOT_OUR_NUMBER = "'from' must be an active number of this project."
NO_VOICE = "This number cannot place voice calls."
PUBLISHABLE_FROM = "Publishable keys cannot choose the caller id; leave out 'from'."
INLINE_NEEDS = "Send 'webhookUrl' (your webhook answers) or 'systemPrompt' (hosted)."
NOT_SERVED = "This relay has no media socket for {kind!r} yet; it serves: {served}."
POST_CALL_OVERRIDE = (
    "Overrides the agent's postCall for this call: the keys sent replace the agent's "
    "(null turns that part off), the rest stay as the agent has them."
)

Scalar = str | int | float | bool | None
Variables = Annotated[dict[str, Scalar], cap("variables_too_large"), KEYS_SCHEMA]


class CallCreate(APIModel):
    agent_id: str = Field(max_length=60)
    to: str | None = Field(
        default=None, max_length=40, description="Outbound phone call: the number to ring."
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=40,
        description="Caller id: a number of this project (default: the agent's first).",
    )
    connection_type: ConnectionType | None = Field(
        default=None,
        description="Bring your own telephony: answers a `joinUrl` for your carrier's stream.",
    )
    sample_rate: Literal[8000, 16000, 24000, 48000] | None = Field(
        default=None, description="PCM rate of a `websocket` call (default 16000)."
    )
    metadata: Metadata | None = Field(default=None, description="Stored with the call.")
    variables: Variables | None = Field(
        default=None, description="Fill `{{variables.name}}` in the greeting and system prompt."
    )
    post_call: PostCallConfig | None = Field(default=None, description=POST_CALL_OVERRIDE)

    @model_validator(mode="after")
    def _one_kind(self) -> CallCreate:
        if (self.to is None) == (self.connection_type is None):
            raise ValueError(TO_OR_CONNECTION)
        if self.from_ is not None and self.to is None:
            raise ValueError(FROM_NEEDS_TO)
        if self.sample_rate is not None and self.connection_type != "websocket":
            raise ValueError(SAMPLE_RATE_WEBSOCKET)
        return self


class InlineCallCreate(APIModel):
    """The whole agent in the request: nothing to create first."""

    system_prompt: str | None = Field(default=None, max_length=32000)
    webhook_url: AnyHttpUrl | None = Field(
        default=None, description="Your webhook answers each turn (else the hosted LLM does)."
    )
    webhook_timeout_ms: int = Field(default=30000, ge=5000, le=120000)
    voice: str | None = Field(default=None, max_length=100)
    language: str = Field(default="en-US", min_length=2, max_length=35)
    greeting: str | None = Field(default=None, max_length=2000)
    model: str | None = Field(default=None, max_length=200)
    temperature: float = Field(default=0, ge=0, le=1)
    first_speaker: Literal["agent", "user"] = "agent"
    interruptible: bool = False
    speculative_turns: bool = Field(
        default=False,
        description="With `webhookUrl`: turns start on the early transcript and may be "
        "superseded (as the agent setting `speculativeTurns`).",
    )
    max_duration: int = Field(default=3000, ge=60, le=7200, description="Seconds.")
    inactivity_timeout: int = Field(default=30, ge=10, le=300, description="Seconds.")
    inactivity_action: Literal["reprompt", "hangup"] = "reprompt"
    recording_enabled: bool = True
    connection_type: ConnectionType = "twilio"
    sample_rate: Literal[8000, 16000, 24000, 48000] | None = None
    metadata: Metadata | None = None
    variables: Variables | None = None
    post_call: PostCallConfig | None = Field(
        default=None, description="Post-call analysis of this call (summary, sentiment, ...)."
    )
    transfer_destinations: list[TransferDestination] | None = Field(
        default=None,
        max_length=MAX_DESTINATIONS,
        description="Where the webhook's `transfer` may send this call; none: refused.",
    )
    tools: list[AgentTool] | None = Field(
        default=None, max_length=32, description="Functions the hosted LLM may call."
    )

    _unique_tools = field_validator("tools")(unique_tool_names)

    @model_validator(mode="after")
    def _brain(self) -> InlineCallCreate:
        if self.webhook_url is None and not self.system_prompt:
            raise ValueError(INLINE_NEEDS)
        if self.sample_rate is not None and self.connection_type != "websocket":
            raise ValueError(SAMPLE_RATE_WEBSOCKET)
        return self


class IceServer(APIModel):
    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class CallCreated(CallOut):
    join_url: str | None = Field(
        default=None,
        description="BYOT: where your carrier opens the media stream. Web calls: the WHIP "
        "endpoint the page POSTs its SDP offer to, with `token`.",
    )
    join_url_expires_at: datetime | None = None
    token: str | None = Field(
        default=None,
        description="Web calls: the page's one-time credential for `joinUrl` "
        "(`Authorization: Bearer TOKEN`); good for 5 minutes, for this call only.",
    )
    ice_servers: list[IceServer] | None = Field(
        default=None, description="Web calls: the RTCPeerConnection's `iceServers`."
    )
    webhook_secret: str | None = Field(
        default=None, description="Inline calls with a webhookUrl: verifies agent.message."
    )


# --- building calls ------------------------------------------------------------------------


def snapshot(
    base: dict[str, Any],
    variables: dict[str, Any],
    sample_rate: int | None,
    post_call: PostCallConfig | None = None,
) -> Any:
    """What the call freezes (:func:`relay.calls.snapshots.freeze`)."""
    override = post_call.model_dump(exclude_unset=True) if post_call is not None else None
    return freeze(base, variables, sample_rate, override)


def _new_call(ctx: Context, **fields: Any) -> Call:
    return Call(
        id=new_id("call"),
        project_id=ctx.project_id,
        status="queued",
        created_at=utcnow(),
        **fields,
    )


def _require_media_route(ctx: Context, connection_type: str) -> None:
    """Hand out a join URL only where a media socket will answer it."""
    served = sorted(
        r.canonical.removeprefix("/media/")
        for r in ctx.request.app.router.resources()
        if r.canonical.startswith("/media/")
    )
    if connection_type not in served:
        raise invalid_field(
            "connectionType",
            NOT_SERVED.format(kind=connection_type, served=", ".join(served) or "none"),
            "connection_type_unavailable",
        )


def _join(ctx: Context, call: Call) -> dict[str, Any]:
    if call.connection_type == "webrtc":
        return _web_join(ctx, call)
    token = tokens.issue(
        ctx.state.signing_key, call.id, MEDIA_TOKEN_PURPOSE, MEDIA_TOKEN_TTL_SECONDS
    )
    base = media_base_url(ctx.state.settings.effective_public_url())
    return {
        "join_url": f"{base}/media/{call.connection_type}?token={token}",
        "join_url_expires_at": utcnow() + timedelta(seconds=MEDIA_TOKEN_TTL_SECONDS),
    }


def _web_join(ctx: Context, call: Call) -> dict[str, Any]:
    """A web call's WHIP endpoint and token; the call fails ``network_timeout`` if the page
    never comes."""
    token = tokens.issue(ctx.state.signing_key, call.id, WEB_TOKEN_PURPOSE, WEB_TOKEN_TTL_SECONDS)
    ctx.request.app[MEDIA].expect(call.id, within=WEB_TOKEN_TTL_SECONDS + 15)
    ice = ctx.state.settings.webrtc_ice_servers
    return {
        "join_url": f"{ctx.state.settings.effective_public_url()}/media/webrtc",
        "join_url_expires_at": utcnow() + timedelta(seconds=WEB_TOKEN_TTL_SECONDS),
        "token": token,
        "ice_servers": [IceServer.model_validate(server) for server in ice],
    }


def _created(call: Call, status: int, **extra: Any) -> web.Response:
    body: CallCreated = call_out(call, CallCreated, **extra)
    return web.json_response(body.model_dump(mode="json", by_alias=True), status=status)


# --- create --------------------------------------------------------------------------------


@router.route(
    "POST",
    "/v1/calls",
    summary="Place an outbound call, or open a BYOT call",
    tag=TAG,
    auth="any",
    body=CallCreate,
    response=CallCreated,
    status=202,
    also=(201,),
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def create_call(ctx: Context, body: CallCreate) -> web.Response:
    """With ``to``: an outbound phone call from ``from`` (default: the agent's first number),
    answered 202 with status ``queued``; follow it by webhooks or ``GET /v1/calls/{id}``.
    A number that texted STOP is refused with ``403 compliance_block`` (reason ``opted_out``).

    With ``connectionType``: a bring-your-own-telephony call, answered **201** with a
    ``joinUrl`` (good for 60 s) for your carrier's media stream (Twilio, Telnyx, Plivo) or
    your own raw PCM websocket.

    With ``connectionType: "webrtc"``: a web call, answered **201** with a WHIP ``joinUrl``,
    a one-time ``token`` (5 minutes) and ``iceServers`` for the page; the browser POSTs its
    SDP offer there (README, "Web calls").

    Publishable keys may use this on the agents and channels they allow (``phone`` for
    phone and carrier streams, ``websocket`` for raw websockets, ``web`` for web calls), from
    the web pages they
    list (CORS: the preflight needs no key; a request whose ``Origin`` the key does not
    list answers 403 ``origin_not_allowed``, a secret key from a page 403
    ``secret_key_in_browser``), to the destinations they allow (else 403
    ``destination_not_allowed``), and may not set ``from``. ``variables`` and ``postCall``
    need a key that allows them (else 403 ``key_scope_violation``), and metadata may be as
    large as the key allows (else 422 ``metadata_too_large``)."""
    key = ctx.key
    assert key is not None
    key.require_channel(CHANNEL_OF[body.connection_type or "phone"])
    key.require_agent(body.agent_id)
    key.require_extras(
        variables=bool(body.variables),
        post_call=body.post_call is not None,
        metadata_bytes=json_size(body.metadata) if body.metadata else 0,
    )
    if body.connection_type is not None:
        return await _create_byot(ctx, body)
    if body.from_ is not None and not key.is_secret:
        raise Forbidden(PUBLISHABLE_FROM, code="key_scope_violation", field="from")
    assert body.to is not None
    to = to_e164(body.to, field="to")
    caller_id = to_e164(body.from_, field="from") if body.from_ is not None else None
    variables = body.variables or {}
    async with writing(ctx.state.db) as session:
        agent = await load_agent(ctx, session, body.agent_id)
        number = await caller_number(ctx, session, agent, caller_id)
        # Before the opt-out check, which would tell a page who texted STOP.
        key.require_destination(to, number.phone_number)
        await refuse_if_opted_out(session, ctx.project_id, to)
        call = _new_call(
            ctx,
            agent_id=agent.id,
            number_id=number.id,
            direction="outbound",
            connection_type=number.provider,
            from_number=number.phone_number,
            to_number=to,
            voice_mode=agent.voice_mode,
            agent_snapshot=snapshot(agent_snapshot(agent), variables, None, body.post_call),
            call_metadata=body.metadata or {},
        )
        await open_call(session, call)
        await enqueue_call(session, call)
    ctx.request.app[DIAL_QUEUE].wake(ctx.project_id)
    return _created(call, 202)


async def caller_number(
    ctx: Context, session: AsyncSession, agent: Agent, caller_id: str | None
) -> Number:
    active = select(Number).where(Number.project_id == ctx.project_id, Number.released_at.is_(None))
    if caller_id is not None:
        number = (
            await session.execute(active.where(Number.phone_number == caller_id))
        ).scalar_one_or_none()
        if number is None:
            raise invalid_field("from", NOT_OUR_NUMBER, "unknown_number")
    else:
        number = (
            await session.execute(
                active.where(Number.agent_id == agent.id).order_by(Number.id).limit(1)
            )
        ).scalar_one_or_none()
        if number is None:
            raise invalid_field("from", NO_NUMBER, "agent_has_no_number")
    if "voice" not in (number.capabilities or []):
        raise invalid_field("from", NO_VOICE, "number_not_voice_capable")
    return number


async def _create_byot(ctx: Context, body: CallCreate) -> web.Response:
    assert body.connection_type is not None
    _require_media_route(ctx, body.connection_type)
    rate = body.sample_rate or LINE_RATE.get(body.connection_type, 8000)
    async with writing(ctx.state.db) as session:
        agent = await load_agent(ctx, session, body.agent_id)
        call = _new_call(
            ctx,
            agent_id=agent.id,
            direction="inbound",
            connection_type=body.connection_type,
            voice_mode=agent.voice_mode,
            agent_snapshot=snapshot(
                agent_snapshot(agent), body.variables or {}, rate, body.post_call
            ),
            call_metadata=body.metadata or {},
        )
        await open_call(session, call, connecting=True)
    return _created(call, 201, **_join(ctx, call))


@router.route(
    "POST",
    "/v1/calls/inline",
    summary="Open a BYOT call with the agent's settings inline",
    tag=TAG,
    body=InlineCallCreate,
    response=CallCreated,
    status=201,
    errors=(400, 401, 403, 413, 415, 422, 429),
)
async def create_inline_call(ctx: Context, body: InlineCallCreate) -> web.Response:
    """No agent to create first: the request carries every setting. With ``webhookUrl`` your
    webhook answers each turn (signed with the ``webhookSecret`` in this response, shown only
    here); without it the hosted LLM answers from ``systemPrompt``. Secret keys only: an
    inline call chooses its own webhook and prompt, which a publishable key must not."""
    _require_media_route(ctx, body.connection_type)
    url = str(body.webhook_url) if body.webhook_url is not None else None
    mode = "webhook" if url is not None else "hosted"
    tools = body.model_dump(exclude_unset=True).get("tools")
    check_mode(ctx, mode, url, body.system_prompt, tools)
    check_speech(ctx.state.settings, voice=body.voice, language=body.language, stt=None, tts=None)
    secret = new_webhook_secret() if url is not None else None
    config = {
        "name": "inline",
        "voice_mode": mode,
        "webhook_url": url,
        "webhook_timeout_ms": body.webhook_timeout_ms,
        "webhook_secret": secret,
        "system_prompt": body.system_prompt,
        "greeting": body.greeting,
        "first_speaker": body.first_speaker,
        "voice": body.voice,
        "language": body.language,
        "model": body.model,
        "temperature": body.temperature,
        "interruptible": body.interruptible,
        "speculative_turns": body.speculative_turns,
        "max_duration_seconds": body.max_duration,
        "inactivity_timeout_seconds": body.inactivity_timeout,
        "inactivity_action": body.inactivity_action,
        "recording_enabled": body.recording_enabled,
        "post_call": body.post_call.model_dump(exclude_unset=True) if body.post_call else None,
        "transfer_destinations": body.transfer_destinations,
        "tools": tools,
    }
    rate = body.sample_rate or LINE_RATE.get(body.connection_type, 8000)
    async with writing(ctx.state.db) as session:
        call = _new_call(
            ctx,
            agent_id=None,
            direction="inbound",
            connection_type=body.connection_type,
            voice_mode=mode,
            agent_snapshot=snapshot({**STORED_DEFAULTS, **config}, body.variables or {}, rate),
            call_metadata=body.metadata or {},
        )
        await open_call(session, call, connecting=True)
    return _created(call, 201, webhook_secret=secret, **_join(ctx, call))
