"""``/v1/keys``: the project's API keys, listed, made, revoked and rotated with a secret key.

A publishable key is made with what a public page needs and no more: its channels and
agents, the pages that may use it (``allowedOrigins``), the numbers it may ring
(``allowedDestinations``) and what its calls may carry (:class:`relay.auth.Allowances`).

A key's secret is shown once, when it is made; afterwards only its ``hint`` (its first
characters). Revoking answers 401 for the key at once on this node; other nodes may honour it
until their cache of it expires (``KEY_CACHE_SECONDS``). A key revoking itself must say so
(``confirmSelf: true``), since nothing it sends afterwards will be answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool, field_validator
from pydantic.alias_generators import to_camel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel, Page, PageQuery
from relay.auth import (
    CHANNELS,
    DEFAULT_MAX_METADATA_BYTES,
    DESTINATIONS_NEED_PHONE,
    MAX_GRACE_SECONDS,
    MAX_METADATA_BYTES,
    Allowances,
    create_key,
    forget_key,
    load_key,
    revoke_key,
    rotate_key,
)
from relay.errors import Conflict, NotFound, invalid_field
from relay.phone import destination_pattern
from relay.store.models import Agent, ApiKey, Project, utcnow
from relay.urls import normalize_origin

router = Router()
TAG = "Keys"
SELF_REVOKE = (
    'This is the key making the request: send {"confirmSelf": true} to revoke it anyway '
    "(nothing it sends afterwards will be answered)."
)
NOT_ROTATABLE = "This key is revoked or was already rotated; rotate its replacement instead."
SCOPES_ARE_PUBLISHABLE = (
    "Scopes (agents, channels, allowed origins and destinations, allowances) apply to "
    "publishable keys only."
)
ALLOWANCE_FIELDS = (
    "allowed_origins",
    "allowed_destinations",
    "allow_variables",
    "allow_post_call",
    "max_metadata_bytes",
)
PUBLISHABLE_FIELDS = ("agents", "channels", *ALLOWANCE_FIELDS)
UNKNOWN_CHANNEL = "Unknown channel {name!r}; choose from: {names}."
UNKNOWN_AGENT = "No agent {agent_id!r} in this project."


def _channels(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for name in value:
        if name not in CHANNELS:
            raise ValueError(UNKNOWN_CHANNEL.format(name=name, names=", ".join(CHANNELS)))
    return list(dict.fromkeys(value))


# Each item normalised on its own, so an error names its index (allowedOrigins.2).
Origin = Annotated[str, Field(max_length=300), AfterValidator(normalize_origin)]
Destination = Annotated[str, Field(max_length=40), AfterValidator(destination_pattern)]


class KeyCreate(APIModel):
    kind: Literal["secret", "publishable"] = "secret"
    name: str | None = Field(default=None, max_length=200, description="A label for the key.")
    agents: list[Annotated[str, Field(max_length=60)]] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Publishable only: the agents it may call (omitted: all of them).",
    )
    channels: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=len(CHANNELS),
        description=(
            "Publishable only: the channels it may use (omitted: web). Web calls are not "
            "available on this relay version yet: a key for a call-me button needs 'phone'."
        ),
    )
    allowed_origins: list[Origin] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description=(
            "Publishable only: the web pages that may use it, as origins "
            "(`https://example.com`, `http://localhost:3000`); `*` is refused. Omitted: no "
            "page may (a request with another `Origin` answers 403 `origin_not_allowed`)."
        ),
    )
    allowed_destinations: list[Destination] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description=(
            "Publishable, 'phone' channel: the numbers it may ring, E.164 (`+14155550123`) "
            "or prefixes (`+1415*`). Omitted: numbers in the country of the number the call "
            "is placed from. Premium-rate, shared-cost and personal numbers are refused "
            "unless listed exactly."
        ),
    )
    allow_variables: StrictBool | None = Field(
        default=None,
        description="Publishable only: may its calls send `variables` (default false).",
    )
    allow_post_call: StrictBool | None = Field(
        default=None,
        description="Publishable only: may its calls set `postCall` (default false).",
    )
    max_metadata_bytes: int | None = Field(
        default=None,
        ge=0,
        le=MAX_METADATA_BYTES,
        description=(
            "Publishable only: the most metadata (compact JSON) its calls may carry "
            f"(default {DEFAULT_MAX_METADATA_BYTES})."
        ),
    )

    _check_channels = field_validator("channels")(_channels)

    def allowances(self) -> Allowances:
        return Allowances.checked(
            origins=self.allowed_origins,
            destinations=self.allowed_destinations,
            variables=bool(self.allow_variables),
            post_call=bool(self.allow_post_call),
            max_metadata_bytes=self.max_metadata_bytes,
        )


class KeyRevoke(APIModel):
    confirm_self: bool = Field(
        default=False,
        strict=True,  # a JSON true, not "yes": this is the one way a key ends itself
        description="Required to revoke the key that makes the request.",
    )


class KeyRotate(APIModel):
    grace_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="Seconds the old key still works (default 0: it stops at once).",
    )


class KeyOut(OutModel):
    id: str
    object: Literal["api_key"] = "api_key"
    kind: Literal["secret", "publishable"]
    name: str | None
    hint: str = Field(description="The key's first characters, to tell keys apart.")
    agents: list[str] | None = Field(description="Publishable: the agents it may call.")
    channels: list[str] | None = Field(description="Publishable: the channels it may use.")
    allowed_origins: list[str] | None = Field(
        description="Publishable: the web pages (origins) that may use it."
    )
    allowed_destinations: list[str] | None = Field(
        description=(
            "Publishable: the numbers and prefixes it may ring (null: the country of the "
            "number a call is placed from)."
        )
    )
    allow_variables: bool | None = Field(description="Publishable: may its calls send variables.")
    allow_post_call: bool | None = Field(description="Publishable: may its calls set postCall.")
    max_metadata_bytes: int | None = Field(
        description="Publishable: the most metadata (compact JSON) its calls may carry."
    )
    created_at: datetime
    revoked_at: datetime | None = Field(
        description="When it stopped (or, rotated with a grace period, stops) working."
    )


class KeyWithSecret(KeyOut):
    key: str = Field(description="The key itself; shown only here. Only its hash is stored.")


class RotatedKey(KeyWithSecret):
    replaced: KeyOut = Field(description="The old key, with the time it stops working.")


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(**_fields(row))


def _fields(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": "secret" if row.kind == "secret" else "publishable",
        "name": row.name,
        "hint": row.hint,
        "agents": row.allowed_agents,
        "channels": row.allowed_channels,
        **_allowances(row),
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
    }


def _allowances(row: ApiKey) -> dict[str, Any]:
    if row.kind == "secret":
        return dict.fromkeys(ALLOWANCE_FIELDS)
    allows = Allowances.of(row)
    return {
        "allowed_origins": list(allows.origins),
        "allowed_destinations": (
            list(allows.destinations) if allows.destinations is not None else None
        ),
        "allow_variables": allows.variables,
        "allow_post_call": allows.post_call,
        "max_metadata_bytes": allows.max_metadata_bytes,
    }


async def _load(ctx: Context, session: AsyncSession) -> ApiKey:
    key_id = ctx.path("key_id")
    row = await load_key(session, key_id, project_id=ctx.project_id)
    if row is None:
        raise NotFound(f"No API key {key_id!r} in this project.")
    return row


async def _check_agents(ctx: Context, session: AsyncSession, agent_ids: list[str]) -> None:
    found = set(
        (
            await session.execute(
                select(Agent.id).where(
                    Agent.project_id == ctx.project_id,
                    Agent.id.in_(agent_ids),
                    Agent.deleted_at.is_(None),
                )
            )
        ).scalars()
    )
    for agent_id in agent_ids:
        if agent_id not in found:
            raise invalid_field("agents", UNKNOWN_AGENT.format(agent_id=agent_id), "unknown_agent")


@router.route(
    "GET",
    "/v1/keys",
    summary="List API keys",
    tag=TAG,
    query=PageQuery,
    response=Page[KeyOut],
    errors=(401, 403, 422, 429),
)
async def list_keys(ctx: Context, query: PageQuery) -> Page[KeyOut]:
    """Newest first, revoked ones included (``revokedAt``). Never a key itself: its ``hint``."""
    stmt = select(ApiKey).where(ApiKey.project_id == ctx.project_id)
    stmt = newest_first(stmt, ApiKey.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[KeyOut], _out)


@router.route(
    "POST",
    "/v1/keys",
    summary="Create an API key",
    tag=TAG,
    body=KeyCreate,
    response=KeyWithSecret,
    status=201,
    errors=(400, 401, 403, 413, 415, 422, 429),
)
async def create_api_key(ctx: Context, body: KeyCreate) -> KeyWithSecret:
    """A secret key (``sk_``) or a publishable one (``pk_``, scoped with ``agents`` and
    ``channels``, the pages that may use it, the numbers it may ring and what its calls may
    carry) in this project. The response carries ``key``: keep it, it is not shown again."""
    if body.kind == "secret":
        for name in PUBLISHABLE_FIELDS:
            if getattr(body, name) is not None:
                raise invalid_field(to_camel(name), SCOPES_ARE_PUBLISHABLE)
        allowances = None
    else:
        if body.allowed_destinations is not None and "phone" not in (body.channels or ()):
            raise invalid_field("allowedDestinations", DESTINATIONS_NEED_PHONE)
        allowances = body.allowances()
    async with ctx.state.db.session() as session:
        if body.agents:
            await _check_agents(ctx, session, list(dict.fromkeys(body.agents)))
        project = await session.get(Project, ctx.project_id)
        if project is None:  # its key was just authenticated: only a deletion in between
            raise NotFound("This project no longer exists.")
        raw, row = await create_key(
            session,
            project.name,
            kind=body.kind,
            name=body.name,
            agents=list(dict.fromkeys(body.agents)) if body.agents else None,
            channels=body.channels,
            allowances=allowances,
        )
        out = KeyWithSecret(key=raw, **_fields(row))
    return out


@router.route(
    "POST",
    "/v1/keys/{key_id}/revoke",
    summary="Revoke an API key",
    tag=TAG,
    body=KeyRevoke,
    body_optional=True,
    response=KeyOut,
    errors=(400, 401, 403, 404, 409, 413, 415, 422, 429),
)
async def revoke_api_key(ctx: Context, body: KeyRevoke | None) -> KeyOut:
    """From now on the key answers 401 ``invalid_api_key`` (a rotated key's grace period
    ends now). Revoking a revoked key changes nothing. The key making the request answers
    409 ``cannot_revoke_self`` unless the body is ``{"confirmSelf": true}``."""
    assert ctx.key is not None
    confirmed = body is not None and body.confirm_self
    if ctx.path("key_id") == ctx.key.id and not confirmed:
        raise Conflict(SELF_REVOKE, code="cannot_revoke_self")
    async with ctx.state.db.session() as session:
        row = await _load(ctx, session)
        revoke_key(row, utcnow())
        out = _out(row)
    await forget_key(ctx.state, row.key_hash)
    return out


@router.route(
    "POST",
    "/v1/keys/{key_id}/rotate",
    summary="Rotate an API key",
    tag=TAG,
    body=KeyRotate,
    body_optional=True,
    response=RotatedKey,
    status=201,
    errors=(400, 401, 403, 404, 409, 413, 415, 422, 429),
)
async def rotate_api_key(ctx: Context, body: KeyRotate | None) -> RotatedKey:
    """A new key with the old one's kind, name, scopes and allowances, shown once in
    ``key``. The old one works for ``graceSeconds`` more (default 0), then answers 401;
    ``replaced`` says when. A key may rotate itself (the new key is in the answer). A revoked
    or already rotated key answers 409 ``key_not_rotatable``."""
    grace = body.grace_seconds if body is not None else 0
    async with ctx.state.db.session() as session:
        old = await _load(ctx, session)
        try:
            raw, new = await rotate_key(session, old, grace, utcnow())
        except ValueError as exc:
            raise Conflict(NOT_ROTATABLE, code="key_not_rotatable") from exc
        out = RotatedKey(key=raw, replaced=_out(old), **_fields(new))
    await forget_key(ctx.state, old.key_hash)
    return out
