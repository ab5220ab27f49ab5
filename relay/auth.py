"""API keys: ``sk_...`` (secret, full access to one project) and ``pk_...`` (publishable,
safe in a web page: may only create calls on the agents and channels it was scoped to).

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

from relay.errors import Forbidden, RateLimited, Unauthorized
from relay.ids import new_id
from relay.store.models import ApiKey, Project, utcnow

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


@dataclass(frozen=True, slots=True)
class AuthKey:
    id: str
    project_id: str
    kind: KeyKind
    allowed_agents: tuple[str, ...] | None
    allowed_channels: tuple[str, ...] | None
    until: datetime | None = None  # a rotated key's grace period ends then

    @property
    def is_secret(self) -> bool:
        return self.kind == "secret"

    def require_channel(self, channel: str) -> None:
        if self.allowed_channels is not None and channel not in self.allowed_channels:
            raise Forbidden(
                f"This publishable key is not allowed to use the '{channel}' channel.",
                code="key_scope_violation",
            )

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
) -> tuple[str, ApiKey]:
    """Make a key and return it in the clear (the only time it is ever seen) with its row."""
    if kind == "secret" and (agents or channels):
        raise ValueError("scopes (agents, channels) apply to publishable keys only")
    for channel in channels or ():
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; choose from {', '.join(CHANNELS)}")
    project = await ensure_project(session, project_name)
    return await _add_key(
        session,
        project.id,
        kind,
        name,
        list(agents) if kind == "publishable" and agents else None,
        list(channels or ["web"]) if kind == "publishable" else None,
    )


async def _add_key(
    session: AsyncSession,
    project_id: str,
    kind: str,
    name: str | None,
    agents: list[str] | None,
    channels: list[str] | None,
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
    """A new key of the same project, kind, name and scopes, returned in the clear; ``key``
    is honoured for ``grace_seconds`` more (0: refused at once). ``key`` must be live and
    not already rotated (raises ValueError). Then :func:`forget_key` on this node."""
    if key.revoked_at is not None:
        raise ValueError("the key is revoked or already rotated")
    raw, new = await _add_key(
        session, key.project_id, key.kind, key.name, key.allowed_agents, key.allowed_channels
    )
    key.revoked_at = now + timedelta(seconds=grace_seconds)
    return raw, new
