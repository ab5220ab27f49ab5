"""API keys: ``sk_...`` (secret, full access to one project) and ``pk_...`` (publishable,
safe in a web page: may only create calls on the agents and channels it was scoped to, from
the pages (origins) it lists, to the destinations it allows, carrying only what its
:class:`Allowances` let a call carry).

Keys carry 192 random bits, so a plain SHA-256 is a sound one-way hash for them (a slow
password hash buys nothing against a search space that size). Only the hash is stored.

A key is made (:func:`create_key`), revoked (:func:`revoke_key`) or rotated
(:func:`rotate_key`: a new key, the old one honoured until its grace period ends). Each node
caches what it looked up for ``KEY_CACHE_SECONDS``; :func:`forget_key` drops a key from this
node's cache, so a key revoked here is refused here at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, NoReturn

from aiohttp import web
from sqlalchemy import or_, select

from relay.errors import Forbidden, RateLimited, Unauthorized, invalid_field
from relay.ids import new_id
from relay.phone import destination_pattern, destination_refusal
from relay.store.models import ApiKey, Project, utcnow
from relay.urls import normalize_origin

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from relay.state import AppState

KeyKind = Literal["secret", "publishable"]
CHANNELS = ("web", "phone", "websocket", "sms")
KEY_CACHE_SECONDS = 5.0
MAX_GRACE_SECONDS = 7 * 24 * 3600  # a rotated key works at most this long beside its successor
MISSING_KEY = "Send your API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."
BAD_KEY = "The API key is not valid."
TOO_MANY_BAD_KEYS = "Too many invalid API keys from this address; wait before trying again."
PUBLISHABLE_FORBIDDEN = "Publishable keys may only create calls; use a secret key for this."
DEFAULT_MAX_METADATA_BYTES = 1024
MAX_METADATA_BYTES = 16 * 1024  # the cap every call's metadata has (relay.api.limits)
WEB_ONLY = (
    " Its only channel is 'web' (web calls: connectionType 'webrtc'); for a call-me button,"
    " create a publishable key with the 'phone' channel."
)
VARIABLES_REFUSED = (
    "This publishable key may not send variables (they fill the agent's system prompt); "
    "create the key with allowVariables: true to allow them."
)
POST_CALL_REFUSED = (
    "This publishable key may not set postCall (it runs jobs after the call); create the key "
    "with allowPostCall: true to allow it."
)
METADATA_REFUSED = (
    "This publishable key's calls may carry at most {limit} bytes of metadata (JSON); this "
    "is {size}. Create the key with a larger maxMetadataBytes to allow more."
)
DESTINATIONS_NEED_PHONE = "allowedDestinations applies to keys with the 'phone' channel."
PUBLISHABLE_ONLY = "{what} apply to publishable keys only"


@dataclass(frozen=True, slots=True)
class Allowances:
    """What a publishable key may do beyond choosing agents and channels.

    ``origins``: the web pages (``Origin``) that may use it; none: no page may.
    ``destinations``: numbers (E.164) and prefixes (``+1415*``) it may ring; None: numbers
    in its caller number's country. Premium-rate numbers need to be listed exactly.
    ``variables``, ``post_call``: whether a call may carry them. ``max_metadata_bytes``:
    how much metadata (compact JSON) a call may carry.
    """

    origins: tuple[str, ...] = ()
    destinations: tuple[str, ...] | None = None
    variables: bool = False
    post_call: bool = False
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES

    @classmethod
    def checked(
        cls,
        *,
        origins: list[str] | None = None,
        destinations: list[str] | None = None,
        variables: bool = False,
        post_call: bool = False,
        max_metadata_bytes: int | None = None,
    ) -> Allowances:
        """Normalised and validated; raises ValueError with a message for the user."""
        size = DEFAULT_MAX_METADATA_BYTES if max_metadata_bytes is None else max_metadata_bytes
        if not 0 <= size <= MAX_METADATA_BYTES:
            raise ValueError(f"maxMetadataBytes must lie between 0 and {MAX_METADATA_BYTES}")
        return cls(
            origins=tuple(dict.fromkeys(normalize_origin(o) for o in origins or ())),
            destinations=(
                tuple(dict.fromkeys(destination_pattern(d) for d in destinations))
                if destinations is not None
                else None
            ),
            variables=variables,
            post_call=post_call,
            max_metadata_bytes=size,
        )

    @classmethod
    def of(cls, row: ApiKey) -> Allowances:
        return cls(
            origins=tuple(row.allowed_origins or ()),
            destinations=(
                tuple(row.allowed_destinations) if row.allowed_destinations is not None else None
            ),
            variables=row.allow_variables,
            post_call=row.allow_post_call,
            max_metadata_bytes=(
                DEFAULT_MAX_METADATA_BYTES
                if row.max_metadata_bytes is None
                else row.max_metadata_bytes
            ),
        )


@dataclass(frozen=True, slots=True)
class AuthKey:
    id: str
    project_id: str
    kind: KeyKind
    allowed_agents: tuple[str, ...] | None
    allowed_channels: tuple[str, ...] | None
    until: datetime | None = None  # a rotated key's grace period ends then
    allowances: Allowances | None = None  # None: a secret key, limited by none of them

    @property
    def is_secret(self) -> bool:
        return self.kind == "secret"

    def require_channel(self, channel: str) -> None:
        if self.allowed_channels is not None and channel not in self.allowed_channels:
            web_only = self.allowed_channels == ("web",)
            raise Forbidden(
                f"This publishable key is not allowed to use the '{channel}' channel."
                + (WEB_ONLY if web_only else ""),
                code="key_scope_violation",
            )

    def require_destination(self, to: str, caller: str) -> None:
        """``to`` and ``caller`` in E.164; 403 ``destination_not_allowed`` when refused."""
        if self.allowances is None:
            return
        reason = destination_refusal(to, caller, self.allowances.destinations)
        if reason is not None:
            raise Forbidden(reason, code="destination_not_allowed", field="to")

    def require_extras(self, *, variables: bool, post_call: bool, metadata_bytes: int) -> None:
        """Whether a call may carry ``variables``, a ``postCall`` override, and metadata of
        ``metadata_bytes`` (compact JSON; 0 for none or ``{}``)."""
        allows = self.allowances
        if allows is None:
            return
        if variables and not allows.variables:
            raise Forbidden(VARIABLES_REFUSED, code="key_scope_violation", field="variables")
        if post_call and not allows.post_call:
            raise Forbidden(POST_CALL_REFUSED, code="key_scope_violation", field="postCall")
        if metadata_bytes > allows.max_metadata_bytes:
            message = METADATA_REFUSED.format(limit=allows.max_metadata_bytes, size=metadata_bytes)
            raise invalid_field("metadata", message, "metadata_too_large")

    def require_agent(self, agent_id: str) -> None:
        if self.allowed_agents is not None and agent_id not in self.allowed_agents:
            raise Forbidden(
                "This publishable key is not allowed to use this agent.",
                code="key_scope_violation",
                field="agentId",
            )


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    # Another scheme (a proxy's Basic auth, say) does not hide an X-API-Key sent with it.
    return request.headers.get("X-API-Key", "").strip() or None


async def authenticate(request: web.Request, state: AppState, required: str) -> AuthKey:
    raw = _presented_key(request)
    if raw is None:
        raise Unauthorized(MISSING_KEY)
    client = request.remote or ""
    if not raw.startswith(("sk_", "pk_")) or len(raw) > 200:
        _failed(state, client)
    digest = hash_key(raw)
    now = time.monotonic()
    cached = state.key_cache.get(digest)
    if cached is not None and cached[0] > now:
        key: AuthKey | None = cached[1]
    else:
        # An address that keeps presenting bad keys waits before it may look one up again.
        _slow_down(state.failed_keys.wait(client, now), state)
        key = await _load_key_once(state, digest, now)
    if key is not None and key.until is not None and key.until <= utcnow():
        key = None  # its grace period ended while it sat in the cache
    if key is None:
        _failed(state, client)
    wait = state.limiter.take(key.id)
    if wait > 0:
        raise RateLimited(
            "Too many requests for this API key; slow down.",
            headers={"Retry-After": state.limiter.retry_after_header(wait)},
        )
    if required == "secret" and not key.is_secret:
        raise Forbidden(PUBLISHABLE_FORBIDDEN, code="publishable_key_not_allowed")
    return key


def _failed(state: AppState, client: str) -> NoReturn:
    """A bad key from ``client``: 401, or 429 once it has been failing too often."""
    _slow_down(state.failed_keys.take(client), state)
    if len(state.failed_keys) > 100_000:
        state.failed_keys.forget_full()
    raise Unauthorized(BAD_KEY, code="invalid_api_key")


def _slow_down(wait: float, state: AppState) -> None:
    if wait > 0:
        raise RateLimited(
            TOO_MANY_BAD_KEYS,
            code="too_many_invalid_keys",
            headers={"Retry-After": state.limiter.retry_after_header(wait)},
        )


async def _load_key_once(state: AppState, digest: str, now: float) -> AuthKey | None:
    """Load a key into the cache; concurrent misses for the same key share one query."""
    pending = state.key_loads.get(digest)
    if pending is None:

        async def load() -> AuthKey | None:
            try:
                key = await _load_key(state, digest)
            finally:
                state.key_loads.pop(digest, None)
            if len(state.key_cache) > 10_000:
                state.key_cache.clear()
            state.key_cache[digest] = (now + KEY_CACHE_SECONDS, key)
            return key

        pending = state.key_loads[digest] = asyncio.ensure_future(load())
    return await asyncio.shield(pending)


async def _load_key(state: AppState, digest: str) -> AuthKey | None:
    async with state.db.session() as session:
        row = (
            await session.execute(
                select(ApiKey).where(
                    ApiKey.key_hash == digest,
                    or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > utcnow()),
                )
            )
        ).scalar_one_or_none()
    if row is None:
        return None
    return AuthKey(
        id=row.id,
        project_id=row.project_id,
        kind="secret" if row.kind == "secret" else "publishable",
        allowed_agents=tuple(row.allowed_agents) if row.allowed_agents is not None else None,
        allowed_channels=tuple(row.allowed_channels) if row.allowed_channels is not None else None,
        until=row.revoked_at,
        allowances=None if row.kind == "secret" else Allowances.of(row),
    )


async def forget_key(state: AppState, digest: str) -> None:
    """This node stops honouring a key it may have cached, once its revocation committed.
    A lookup in flight may have read the key before that: it is waited for, then dropped."""
    pending = state.key_loads.get(digest)
    if pending is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(pending)
    state.key_cache.pop(digest, None)


async def ensure_project(session: AsyncSession, name: str) -> Project:
    project = (
        await session.execute(select(Project).where(Project.name == name))
    ).scalar_one_or_none()
    if project is None:
        project = Project(id=new_id("proj"), name=name)
        session.add(project)
        await session.flush()
    return project


async def create_key(
    session: AsyncSession,
    project_name: str,
    *,
    kind: KeyKind = "secret",
    name: str | None = None,
    agents: list[str] | None = None,
    channels: list[str] | None = None,
    allowances: Allowances | None = None,
) -> tuple[str, ApiKey]:
    """Make a key and return it in the clear (the only time it is ever seen) with its row.
    A publishable key made without ``allowances`` gets the defaults of :class:`Allowances`."""
    if kind == "secret" and (agents or channels):
        raise ValueError(PUBLISHABLE_ONLY.format(what="scopes (agents, channels)"))
    if kind == "secret" and allowances is not None:
        raise ValueError(PUBLISHABLE_ONLY.format(what="origins, destinations and allowances"))
    for channel in channels or ():
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; choose from {', '.join(CHANNELS)}")
    channels = list(dict.fromkeys(channels or ["web"])) if kind == "publishable" else None
    if kind == "publishable":
        allowances = allowances or Allowances()
        if allowances.destinations is not None and "phone" not in (channels or ()):
            raise ValueError(DESTINATIONS_NEED_PHONE)
    project = await ensure_project(session, project_name)
    return await _add_key(
        session,
        project.id,
        kind,
        name,
        list(agents) if kind == "publishable" and agents else None,
        channels,
        allowances,
    )


async def _add_key(
    session: AsyncSession,
    project_id: str,
    kind: str,
    name: str | None,
    agents: list[str] | None,
    channels: list[str] | None,
    allowances: Allowances | None,
) -> tuple[str, ApiKey]:
    raw = ("sk_" if kind == "secret" else "pk_") + secrets.token_urlsafe(24)
    row = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        kind=kind,
        key_hash=hash_key(raw),
        hint=raw[:7],
        name=name,
        allowed_agents=agents,
        allowed_channels=channels,
    )
    if allowances is not None:
        row.allowed_origins = list(allowances.origins)
        row.allowed_destinations = (
            list(allowances.destinations) if allowances.destinations is not None else None
        )
        row.allow_variables = allowances.variables
        row.allow_post_call = allowances.post_call
        row.max_metadata_bytes = allowances.max_metadata_bytes
    session.add(row)
    await session.flush()
    return raw, row


def is_live(key: ApiKey, now: datetime) -> bool:
    """Whether ``key`` is honoured at ``now`` (a rotated key: until its grace period ends)."""
    return key.revoked_at is None or key.revoked_at > now


async def load_key(
    session: AsyncSession, key_id: str, *, project_id: str | None = None
) -> ApiKey | None:
    """The key ``key_id`` (of ``project_id`` only, when given), locked for a change."""
    stmt = select(ApiKey).where(ApiKey.id == key_id)
    if project_id is not None:
        stmt = stmt.where(ApiKey.project_id == project_id)
    key: ApiKey | None = (await session.execute(stmt.with_for_update())).scalar_one_or_none()
    return key


def revoke_key(key: ApiKey, now: datetime) -> None:
    """Refuse ``key`` from ``now`` on (a rotated key's grace period ends early); a key
    already refused keeps the time it stopped. Then :func:`forget_key` on this node."""
    if is_live(key, now):
        key.revoked_at = now


async def rotate_key(
    session: AsyncSession, key: ApiKey, grace_seconds: int, now: datetime
) -> tuple[str, ApiKey]:
    """A new key of the same project, kind, name, scopes and allowances, returned in the
    clear; ``key`` is honoured for ``grace_seconds`` more (0: refused at once). ``key`` must
    be live and not already rotated (raises ValueError). Then :func:`forget_key` here."""
    if key.revoked_at is not None:
        raise ValueError("the key is revoked or already rotated")
    raw, new = await _add_key(
        session,
        key.project_id,
        key.kind,
        key.name,
        key.allowed_agents,
        key.allowed_channels,
        None if key.kind == "secret" else Allowances.of(key),
    )
    key.revoked_at = now + timedelta(seconds=grace_seconds)
    return raw, new
