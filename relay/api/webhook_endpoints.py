"""``/v1/webhook-endpoints``: where lifecycle events (``call.completed``...) are delivered.

Each endpoint gets every event type, or those in its ``events`` filter, signed with its own
``whsec_`` secret (Standard Webhooks; during a rotation's grace period with the previous one
too). Its deliveries, with every attempt, can be listed
and retried by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AnyHttpUrl, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.agents import RotateSecret, new_webhook_secret
from relay.api.pagination import cursor_row, fetch_page, keyset, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, Deleted, OutModel, Page, PageQuery
from relay.errors import Conflict, NotFound, invalid_field
from relay.events import DELIVERY, DELIVERY_STATUSES, EVENT_TYPES, PENDING
from relay.ids import new_id
from relay.store.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from relay.urls import check_webhook_url

router = Router()
TAG = "Lifecycle webhooks"
UNKNOWN_EVENT = "Unknown event type {name!r}; choose from: {names}."
ENDPOINT_DISABLED = "The endpoint is disabled; enable it (PATCH enabled: true) first."
IN_FLIGHT = "This delivery is being attempted right now."
MAX_ENDPOINTS = 20


def _event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for name in value:
        if name not in EVENT_TYPES:
            raise ValueError(UNKNOWN_EVENT.format(name=name, names=", ".join(EVENT_TYPES)))
    return list(dict.fromkeys(value))


class EndpointFields(APIModel):
    url: AnyHttpUrl | None = Field(default=None, description="Receives the events (POST).")
    events: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="Event types to receive; omitted or null: all of them.",
    )
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None

    _check_events = field_validator("events")(_event_types)


class EndpointCreate(EndpointFields):
    url: AnyHttpUrl = Field(description="Receives the events (POST).")


class EndpointUpdate(EndpointFields):
    """Send only what changes. ``enabled: true`` re-enables an endpoint disabled by a 410;
    its deliveries that were waiting go out in order."""


class EndpointOut(OutModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="Verifies the signatures; shown only on create.")


class RotatedEndpointSecret(OutModel):
    id: str
    secret: str = Field(description="The new secret; shown only here.")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then deliveries carry a signature from the old secret too."
    )


ATTEMPT_ERROR = (
    "Why the attempt failed: the receiver's status, body size and time (never its body), "
    "or why no answer came."
)


class AttemptOut(OutModel):
    number: int
    started_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None = Field(description=ATTEMPT_ERROR)


class DeliveryOut(OutModel):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    ordering_key: str | None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None = Field(description=ATTEMPT_ERROR)
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]


class DeliveryQuery(PageQuery):
    status: Literal["pending", "succeeded", "failed"] | None = None
    event_type: str | None = Field(default=None, max_length=40)


assert set(DELIVERY_STATUSES) == {"pending", "succeeded", "failed"}


def _out(e: WebhookEndpoint, *, secret: bool = False) -> Any:
    fields: dict[str, Any] = {
        "id": e.id,
        "url": e.url,
        "events": e.events,
        "description": e.description,
        "enabled": e.enabled,
        "disabled_reason": e.disabled_reason,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
    }
    return EndpointWithSecret(secret=e.secret, **fields) if secret else EndpointOut(**fields)


def _delivery_out(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    status: Any = d.status
    return DeliveryOut(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=d.event_type,
        ordering_key=d.ordering_key,
        status=status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == PENDING else None,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
        attempt_log=[
            AttemptOut(
                number=a.number,
                started_at=a.started_at,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                error=a.error,
            )
            for a in attempts
        ],
    )


def _check_url(ctx: Context, url: str) -> None:
    reason = check_webhook_url(url, allow_private=ctx.state.settings.allow_private_webhooks)
    if reason:
        raise invalid_field("url", reason, "invalid_webhook_url")


async def _load(ctx: Context, session: AsyncSession, endpoint_id: str) -> WebhookEndpoint:
    endpoint: WebhookEndpoint | None = (
        await session.execute(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.project_id == ctx.project_id
            )
        )
    ).scalar_one_or_none()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id!r} in this project.")
    return endpoint


async def _attempts(session: AsyncSession, ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    out: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(ids))
            .order_by(WebhookAttempt.started_at, WebhookAttempt.id)
        )
        for attempt in rows.scalars():
            out[attempt.delivery_id].append(attempt)
    return out


@router.route(
    "POST",
    "/v1/webhook-endpoints",
    summary="Create a webhook endpoint",
    tag=TAG,
    body=EndpointCreate,
    response=EndpointWithSecret,
    status=201,
    errors=(400, 401, 403, 409, 413, 415, 422, 429),
)
async def create_endpoint(ctx: Context, body: EndpointCreate) -> EndpointWithSecret:
    """The response carries ``secret`` (``whsec_...``): keep it, it is not shown again.
    Events that happen from now on are delivered; earlier ones are not replayed."""
    url = str(body.url)
    _check_url(ctx, url)
    now = utcnow()
    endpoint = WebhookEndpoint(
        id=new_id("whe"),
        project_id=ctx.project_id,
        url=url,
        description=body.description,
        events=body.events,
        secret=new_webhook_secret(),
        enabled=body.enabled if body.enabled is not None else True,
        created_at=now,
        updated_at=now,
    )
    async with ctx.state.db.session() as session:
        count = len(
            (
                await session.execute(
                    select(WebhookEndpoint.id).where(WebhookEndpoint.project_id == ctx.project_id)
                )
            ).all()
        )
        if count >= MAX_ENDPOINTS:
            raise Conflict(
                f"A project may have at most {MAX_ENDPOINTS} webhook endpoints.",
                code="too_many_endpoints",
            )
        session.add(endpoint)
    result: EndpointWithSecret = _out(endpoint, secret=True)
    return result


@router.route(
    "GET",
    "/v1/webhook-endpoints",
    summary="List webhook endpoints",
    tag=TAG,
    query=PageQuery,
    response=Page[EndpointOut],
    errors=(401, 403, 422, 429),
)
async def list_endpoints(ctx: Context, query: PageQuery) -> Page[EndpointOut]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.project_id == ctx.project_id)
    stmt = newest_first(stmt, WebhookEndpoint.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[EndpointOut], _out)


@router.route(
    "GET",
    "/v1/webhook-endpoints/{endpoint_id}",
    summary="Get a webhook endpoint",
    tag=TAG,
    response=EndpointOut,
    errors=(401, 403, 404, 429),
)
async def get_endpoint(ctx: Context) -> EndpointOut:
    async with ctx.state.db.session() as session:
        result: EndpointOut = _out(await _load(ctx, session, ctx.path("endpoint_id")))
    return result


@router.route(
    "PATCH",
    "/v1/webhook-endpoints/{endpoint_id}",
    summary="Update a webhook endpoint",
    tag=TAG,
    body=EndpointUpdate,
    response=EndpointOut,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def update_endpoint(ctx: Context, body: EndpointUpdate) -> EndpointOut:
    given = body.model_dump(exclude_unset=True)
    if "url" in given and body.url is None:
        raise invalid_field("url", "url cannot be null.")
    if "enabled" in given and body.enabled is None:
        raise invalid_field("enabled", "enabled cannot be null.")
    if body.url is not None:
        _check_url(ctx, str(body.url))
    async with ctx.state.db.session() as session:
        endpoint = await _load(ctx, session, ctx.path("endpoint_id"))
        if body.url is not None:
            endpoint.url = str(body.url)
        if "events" in given:
            endpoint.events = body.events
        if "description" in given:
            endpoint.description = body.description
        if body.enabled is not None:
            endpoint.enabled = body.enabled
            endpoint.disabled_reason = None if body.enabled else "Disabled through the API."
        endpoint.updated_at = utcnow()
    ctx.request.app[DELIVERY].wake(claim=True)
    result: EndpointOut = _out(endpoint)
    return result


@router.route(
    "DELETE",
    "/v1/webhook-endpoints/{endpoint_id}",
    summary="Delete a webhook endpoint",
    tag=TAG,
    response=Deleted,
    errors=(401, 403, 404, 429),
)
async def delete_endpoint(ctx: Context) -> Deleted:
    """Its deliveries, pending or past, go with it."""
    async with ctx.state.db.session() as session:
        endpoint = await _load(ctx, session, ctx.path("endpoint_id"))
        await session.delete(endpoint)
    return Deleted(id=endpoint.id, object="webhook_endpoint")


@router.route(
    "POST",
    "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
    summary="Rotate the endpoint's signing secret",
    tag=TAG,
    body=RotateSecret,
    response=RotatedEndpointSecret,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
    body_optional=True,
)
async def rotate_endpoint_secret(ctx: Context, body: RotateSecret | None) -> RotatedEndpointSecret:
    """Returns the new secret. Until ``graceSeconds`` (default
    ``RELAY_WEBHOOK_SECRET_GRACE_SECONDS``) have passed, each delivery, retries included,
    carries a signature from each secret, so receivers can switch over; ``0`` ends the old
    secret at once. A second rotation replaces the previous secret kept by the first."""
    grace = body.grace_seconds if body is not None else None
    if grace is None:
        grace = ctx.state.settings.webhook_secret_grace_seconds
    now = utcnow()
    expires = now + timedelta(seconds=grace) if grace > 0 else None
    async with ctx.state.db.session() as session:
        endpoint = await _load(ctx, session, ctx.path("endpoint_id"))
        endpoint.previous_secret = endpoint.secret if expires else None
        endpoint.previous_secret_expires_at = expires
        endpoint.secret = new_webhook_secret()
        endpoint.updated_at = now
    return RotatedEndpointSecret(
        id=endpoint.id, secret=endpoint.secret, previous_secret_expires_at=expires
    )


@router.route(
    "GET",
    "/v1/webhook-endpoints/{endpoint_id}/deliveries",
    summary="List an endpoint's deliveries",
    tag=TAG,
    query=DeliveryQuery,
    response=Page[DeliveryOut],
    errors=(401, 403, 404, 422, 429),
)
async def list_deliveries(ctx: Context, query: DeliveryQuery) -> Page[DeliveryOut]:
    """Newest event first, each with every attempt (status code, latency, error)."""
    async with ctx.state.db.session() as session:
        endpoint = await _load(ctx, session, ctx.path("endpoint_id"))
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        if query.status:
            stmt = stmt.where(WebhookDelivery.status == query.status)
        if query.event_type:
            stmt = stmt.where(WebhookDelivery.event_type == query.event_type)
        d = WebhookDelivery
        mark = await cursor_row(session, d, query.cursor, lambda m: m.endpoint_id == endpoint.id)
        # Newest event first: ids alone do not order deliveries made in the same millisecond.
        stmt = keyset(stmt, (d.event_created_at, d.event_id), mark, descending=True)
        window = await fetch_page(session, stmt, query)
        attempts = await _attempts(session, [d.id for d in window.rows])
    return window.page(Page[DeliveryOut], lambda row: _delivery_out(row, attempts[row.id]))


@router.route(
    "POST",
    "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
    summary="Retry a delivery now",
    tag=TAG,
    response=DeliveryOut,
    status=202,
    errors=(401, 403, 404, 409, 429),
)
async def retry_delivery(ctx: Context) -> DeliveryOut:
    """Sends it again at once, with the same ``webhook-id``, and restarts its retry
    schedule. 409 while the endpoint is disabled or the delivery is in flight."""
    delivery_id = ctx.path("delivery_id")
    async with ctx.state.db.session() as session:
        endpoint = await _load(ctx, session, ctx.path("endpoint_id"))
        delivery = (
            await session.execute(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.endpoint_id == endpoint.id,
                )
                .with_for_update()
            )
        ).scalar_one_or_none()
        if delivery is None:
            raise NotFound(f"No delivery {delivery_id!r} for this endpoint.")
        if not endpoint.enabled:
            raise Conflict(ENDPOINT_DISABLED, code="endpoint_disabled")
        now = utcnow()
        if delivery.status == PENDING and delivery.claimed_by and delivery.next_attempt_at > now:
            raise Conflict(IN_FLIGHT, code="delivery_in_flight")
        delivery.status = PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.claimed_by = None
        attempts = await _attempts(session, [delivery.id])
    ctx.request.app[DELIVERY].wake(claim=True)
    return _delivery_out(delivery, attempts[delivery.id])
