"""The outbox in SQL: ``webhook_deliveries`` claimed, written back, and leases released.

A claim takes due deliveries: pending, ``next_attempt_at`` passed, endpoint enabled, and no
earlier delivery with the same ``ordering_key`` still pending for that endpoint (nor an
earlier event of that key not yet fanned out). The deliveries queued behind each one (same
endpoint and key) are claimed with it, to be sent right after it, in order, by one task. A
claim is a lease: ``next_attempt_at`` moves past the request timeout and ``claimed_by``
names this node. A relay that dies between a send and its write-back sends the delivery again
after restarting (:func:`release_leases`), or another node does once the lease runs out, with
the same ``webhook-id``. On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED``, so several
nodes share the work; on SQLite one relay process owns the database file.

Write-backs: deliveries answered 2xx are recorded with one statement for the attempts and one
for the deliveries, however many. The others one by one: 410 Gone disables the endpoint (its
pending deliveries wait until it is enabled again); anything else is retried on the schedule,
and after the last attempt the delivery is ``failed`` and can be retried by hand. A delivery
retried by hand or re-claimed after our lease ran out keeps its new owner's state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    Integer,
    Result,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    insert,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased

from relay.events.wire import Job, Outcome, event_body, next_delay
from relay.ids import new_id
from relay.logs import get_logger
from relay.signing import Secrets
from relay.store.db import Database
from relay.store.models import (
    Base,
    LifecycleEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

log = get_logger("relay.events.delivery")

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
DELIVERY_STATUSES = (PENDING, SUCCEEDED, FAILED)
# Deliveries of one ordering key sent back to back by one task (see ``_followers``).
MAX_CHAIN = 20


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


DELIVERIES = _table(WebhookDelivery)
EVENTS = _table(LifecycleEvent)
INSERT_DELIVERIES = insert(DELIVERIES)
_attempts = _table(WebhookAttempt)
_INSERT_ATTEMPT = insert(_attempts).from_select(
    ["id", "delivery_id", "number", "started_at", "status_code", "latency_ms"],
    select(
        bindparam("b_aid", type_=String),
        DELIVERIES.c.id,
        bindparam("b_number", type_=Integer),
        bindparam("b_started", type_=_attempts.c.started_at.type),
        bindparam("b_code", type_=Integer),
        bindparam("b_latency", type_=Integer),
    ).where(DELIVERIES.c.id == bindparam("b_id")),
)
# Built once, values as parameters: each execute reuses the compiled statement.
_ours = and_(
    DELIVERIES.c.claimed_by == bindparam("b_node", type_=String), DELIVERIES.c.status == PENDING
)
_PENDING_IN_LANES = select(
    DELIVERIES.c.id, DELIVERIES.c.endpoint_id, DELIVERIES.c.ordering_key, DELIVERIES.c.claimed_by
).where(
    DELIVERIES.c.endpoint_id.in_(bindparam("b_endpoints", expanding=True)),
    DELIVERIES.c.ordering_key.in_(bindparam("b_keys", expanding=True)),
    DELIVERIES.c.status == PENDING,
)
_DELIVERED = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"))
    .values(
        last_status_code=bindparam("b_code"),
        last_error=None,
        status=case((_ours, SUCCEEDED), else_=DELIVERIES.c.status),
        delivered_at=case(
            (_ours, bindparam("b_now", type_=DELIVERIES.c.delivered_at.type)),
            else_=DELIVERIES.c.delivered_at,
        ),
        claimed_by=case((_ours, null()), else_=DELIVERIES.c.claimed_by),
    )
)


def pending_in_lanes(
    session: Session, endpoint_ids: list[str], keys: list[str]
) -> Result[str, str, str | None, str | None]:
    """``(id, endpoint_id, ordering_key, claimed_by)`` of the pending deliveries of those
    endpoints and keys. Two INs, not one of (endpoint, key) pairs: SQLite uses the index
    only for these."""
    return session.execute(_PENDING_IN_LANES, {"b_endpoints": endpoint_ids, "b_keys": keys})


async def claim(
    session: AsyncSession,
    now: datetime,
    limit: int,
    *,
    node_id: str,
    lease: timedelta,
    sqlite: bool,
) -> list[list[Job]]:
    """Lease up to ``limit`` due deliveries for ``node_id``, each with those queued behind
    it: the chains to send, each in order."""
    d = WebhookDelivery
    earlier = aliased(WebhookDelivery)
    earlier_pending = exists().where(
        earlier.endpoint_id == d.endpoint_id,
        earlier.ordering_key == d.ordering_key,
        earlier.status == PENDING,
        or_(
            earlier.event_created_at < d.event_created_at,
            and_(
                earlier.event_created_at == d.event_created_at,
                earlier.event_id < d.event_id,
            ),
        ),
    )
    conditions = [
        d.status == PENDING,
        d.next_attempt_at <= now,
        WebhookEndpoint.enabled.is_(True),
        ~earlier_pending,
    ]
    if not sqlite:
        # Another node may not have fanned out an earlier event of this key yet. (On
        # SQLite this one process fans out and claims in the same transaction.)
        unsent = aliased(LifecycleEvent)
        conditions.append(
            ~exists().where(
                unsent.dispatched_at.is_(None),
                unsent.project_id == d.project_id,
                unsent.ordering_key == d.ordering_key,
                unsent.created_at < d.event_created_at,
            )
        )
    heads = (
        await session.execute(
            select(
                d,
                WebhookEndpoint.url,
                WebhookEndpoint.secret,
                WebhookEndpoint.previous_secret,
                WebhookEndpoint.previous_secret_expires_at,
                LifecycleEvent,
            )
            .join(WebhookEndpoint, WebhookEndpoint.id == d.endpoint_id)
            .join(LifecycleEvent, LifecycleEvent.id == d.event_id)
            .where(*conditions)
            .order_by(d.next_attempt_at, d.event_created_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=d)
        )
    ).all()
    followers = await _followers(session, [h[0] for h in heads])
    lease_until = now + lease
    chains = []
    for delivery, url, secret, previous, previous_until, evt in heads:
        secrets = Secrets(secret, previous, previous_until)
        chain = []
        for member, member_evt in [(delivery, evt), *followers.get(delivery.id, [])]:
            if member is not delivery and (
                member.claimed_by is not None or member.next_attempt_at > now
            ):
                break
            member.attempts += 1
            member.claimed_by = node_id
            member.next_attempt_at = lease_until
            chain.append(
                Job(
                    member.id,
                    member.endpoint_id,
                    member.attempts,
                    url,
                    secrets,
                    event_body(member_evt),
                    member.ordering_key,
                )
            )
        chains.append(chain)
    return chains


async def _followers(
    session: AsyncSession, heads: list[WebhookDelivery]
) -> dict[str, list[tuple[WebhookDelivery, LifecycleEvent]]]:
    """The pending deliveries behind each head (same endpoint and ordering key), in
    order: sent right after it, not one cycle after another."""
    keyed: dict[tuple[str, str | None], WebhookDelivery] = {
        (h.endpoint_id, h.ordering_key): h for h in heads if h.ordering_key
    }
    if not keyed:
        return {}
    d = WebhookDelivery
    rows = (
        await session.execute(
            select(d, LifecycleEvent)
            .join(LifecycleEvent, LifecycleEvent.id == d.event_id)
            .where(
                tuple_(d.endpoint_id, d.ordering_key).in_(list(keyed)),
                d.status == PENDING,
                d.id.not_in([h.id for h in heads]),
            )
            .order_by(d.event_created_at, d.event_id)
            .with_for_update(of=d)
        )
    ).all()
    out: dict[str, list[tuple[WebhookDelivery, LifecycleEvent]]] = {}
    for member, evt in rows:
        head = keyed[(member.endpoint_id, member.ordering_key)]
        chain = out.setdefault(head.id, [])
        if len(chain) < MAX_CHAIN - 1:
            chain.append((member, evt))
    return out


async def record_delivered(
    session: AsyncSession, outcomes: list[Outcome], now: datetime, node_id: str
) -> None:
    """The common case, in two statements for any number: the attempts (of deliveries
    that still exist: an endpoint may have been deleted), and each delivery ``succeeded``
    if still ours (not retried by hand nor re-claimed)."""
    await session.execute(
        _INSERT_ATTEMPT,
        [
            {
                "b_aid": new_id("wha"),
                "b_id": o.job.delivery_id,
                "b_number": o.job.attempt,
                "b_started": o.started_at,
                "b_code": o.status_code,
                "b_latency": o.latency_ms,
            }
            for o in outcomes
        ],
    )
    await session.execute(
        _DELIVERED,
        [
            {"b_id": o.job.delivery_id, "b_code": o.status_code, "b_now": now, "b_node": node_id}
            for o in outcomes
        ],
    )


async def record_others(
    session: AsyncSession,
    outcomes: list[Outcome],
    now: datetime,
    node_id: str,
    schedule: Sequence[float],
) -> float:
    """Failures, and deliveries given back unattempted (``sent`` False). Returns when the
    earliest retry it scheduled falls due (``time.monotonic()``; inf if none)."""
    next_due = math.inf
    rows = await session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_([o.job.delivery_id for o in outcomes]))
    )
    found = {d.id: (d, e) for d, e in rows}
    for o in outcomes:
        if o.job.delivery_id not in found:
            continue  # the endpoint was deleted meanwhile
        delivery, endpoint = found[o.job.delivery_id]
        if not o.sent:
            if delivery.claimed_by == node_id and delivery.status == PENDING:
                delivery.attempts -= 1
                delivery.claimed_by = None
                delivery.next_attempt_at = now
            continue
        session.add(
            WebhookAttempt(
                id=new_id("wha"),
                delivery_id=delivery.id,
                number=o.job.attempt,
                started_at=o.started_at,
                status_code=o.status_code,
                latency_ms=o.latency_ms,
                error=o.error,
            )
        )
        delivery.last_status_code = o.status_code
        delivery.last_error = o.error
        if delivery.claimed_by != node_id or delivery.status != PENDING:
            continue  # retried by hand or re-claimed after our lease ran out
        delivery.claimed_by = None
        if o.ok:
            delivery.status = SUCCEEDED
            delivery.delivered_at = now
        elif o.gone:
            delivery.status = FAILED
            if endpoint.enabled:
                endpoint.enabled = False
                endpoint.disabled_reason = "The endpoint answered 410 Gone."
                endpoint.updated_at = now
                log.warning("webhook_endpoint_disabled", endpoint_id=endpoint.id)
        else:
            delay = next_delay(schedule, delivery.attempts, o.retry_after)
            if delay is None:
                delivery.status = FAILED
            else:
                delivery.next_attempt_at = now + timedelta(seconds=delay)
                next_due = min(next_due, time.monotonic() + delay)
    return next_due


async def release_leases(db: Database, node_id: str) -> int:
    """Make deliveries leased by ``node_id`` (a previous life of this node) due now."""
    async with db.session() as session:
        result = await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.claimed_by == node_id)
            .values(claimed_by=None, next_attempt_at=utcnow())
        )
    return int(getattr(result, "rowcount", 0) or 0)


__all__ = [
    "DELIVERIES",
    "DELIVERY_STATUSES",
    "EVENTS",
    "FAILED",
    "INSERT_DELIVERIES",
    "MAX_CHAIN",
    "PENDING",
    "SUCCEEDED",
    "claim",
    "pending_in_lanes",
    "record_delivered",
    "record_others",
    "release_leases",
]
