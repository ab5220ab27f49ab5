"""Lifecycle events and their durable delivery.

``emit`` only writes a row, inside the caller's transaction: the event exists if and only
if the change it reports was committed. Delivery (signed, retried, ordered per
``ordering_key``) happens later, in :mod:`relay.events.delivery`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relay.ids import new_id
from relay.store.models import utcnow

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


EMITTED = "relay_events_emitted"  # Session.info: the events emitted in its transaction


@dataclass(slots=True)
class Emitted:
    """A lifecycle event emitted in a transaction: a ``lifecycle_events`` row, written (and
    fanned out to the endpoints) when the transaction next flushes or commits, with the
    other events of that transaction in one INSERT. Not an ORM object: the unit of work's
    bookkeeping for one (its state, adding it, taking it out again once written) cost more
    than writing it."""

    id: str
    project_id: str
    type: str
    ordering_key: str | None
    data: dict[str, Any]
    created_at: datetime
    dispatched_at: datetime | None = None


async def emit(
    session: AsyncSession,
    *,
    project_id: str,
    type: str,
    data: dict[str, Any],
    ordering_key: str | None = None,
) -> Emitted:
    """Record a lifecycle event in the current transaction (written when it flushes or
    commits, dropped if it rolls back)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown lifecycle event type {type!r}")
    event = Emitted(new_id("evt"), project_id, type, ordering_key, data, utcnow())
    session.info.setdefault(EMITTED, []).append(event)
    return event


# The hooks that write emitted events (and fan them out) must be in place wherever one is
# emitted: importing the package installs them.
from relay.events import delivery as _delivery  # noqa: E402, F401

__all__ = ["EVENT_TYPES", "Emitted", "emit"]
