"""Emitting a lifecycle event: the types there are, and :func:`emit`.

``emit`` only records the event in the caller's transaction: it is written (and fanned out to
the endpoints, :mod:`relay.events.fanout`) when that transaction next flushes or commits, so
the event exists if and only if the change it reports was committed. That takes the hooks
:func:`relay.events.attach` puts on the database's sessions; ``emit`` refuses a session of a
database they were never attached to, where the event would be dropped without a word.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

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
    "agent.interrupted",
    "recording.ready",
    "call.analyzed",
    "message.received",
    "message.sent",
    "message.delivered",
    "message.failed",
    "batch.started",
    "batch.completed",
)


EMITTED = "relay_events_emitted"  # Session.info: the events emitted in its transaction

# The Session classes whose sessions write what is emitted in them (see relay.events.attach).
ATTACHED: weakref.WeakSet[type[Session]] = weakref.WeakSet()
NOT_ATTACHED = (
    "lifecycle events emitted in this session would never be written: "
    "call relay.events.attach(db) for its database first"
)


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


# An event being fanned out or delivered: emitted in this transaction, or read back from the
# table.
AnyEvent = Emitted | LifecycleEvent


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
    if session.sync_session.__class__ not in ATTACHED:
        raise RuntimeError(NOT_ATTACHED)
    event = Emitted(new_id("evt"), project_id, type, ordering_key, data, utcnow())
    session.info.setdefault(EMITTED, []).append(event)
    return event


__all__ = ["ATTACHED", "EMITTED", "EVENT_TYPES", "AnyEvent", "Emitted", "emit"]
