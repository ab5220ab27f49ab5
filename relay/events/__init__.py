"""Lifecycle events and their durable delivery.

``emit`` only writes a row, inside the caller's transaction: the event exists if and only
if the change it reports was committed. Delivery (signed, retried, ordered per
``ordering_key``) happens later, in :mod:`relay.events.delivery`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relay.ids import new_id
from relay.store.models import LifecycleEvent, utcnow

EVENT_TYPES = (
    "call.queued",
    "call.connecting",
    "call.ringing",
    "call.in_progress",
    "call.completed",
    "call.failed",
    "transcript.ready",
    "recording.ready",
    "call.analyzed",
    "message.received",
    "message.sent",
    "message.delivered",
    "message.failed",
)


async def emit(
    session: AsyncSession,
    *,
    project_id: str,
    type: str,
    data: dict[str, Any],
    ordering_key: str | None = None,
) -> LifecycleEvent:
    """Record a lifecycle event in the current transaction."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown lifecycle event type {type!r}")
    event = LifecycleEvent(
        id=new_id("evt"),
        project_id=project_id,
        type=type,
        ordering_key=ordering_key,
        data=data,
        created_at=utcnow(),
    )
    session.add(event)
    return event


__all__ = ["EVENT_TYPES", "emit"]
