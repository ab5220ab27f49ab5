"""Fan-out: each lifecycle event becomes one delivery per endpoint that wants it.

It happens where the event is written: the session's flush and commit hooks write the events
the transaction emitted (:class:`relay.events.Emitted`) with one ``webhook_deliveries`` row
each per enabled endpoint of its project that wants that type, and mark them dispatched, in
the emitting transaction. So a state change commits together with its deliveries. Most of
those are claimed right there by this process's worker (:meth:`DeliveryWorker.reserve`) and
handed to it when the transaction commits; the others wake it to claim them from the outbox.
Events written some other way are fanned out by the worker's sweep (:func:`fan_out_unsent`;
on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so several nodes share the work).

The hooks go on one database's own Session class, by :func:`attach`: the composition root
attaches its database at start-up; importing this package changes no session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relay.events.emitting import ATTACHED, EMITTED, AnyEvent
from relay.events.outbox import DELIVERIES, EVENTS, INSERT_DELIVERIES, PENDING
from relay.ids import new_id
from relay.signing import Secrets
from relay.store import Database, insert_now
from relay.store.models import LifecycleEvent, WebhookEndpoint, utcnow

FANOUT_BATCH = 500

_MADE = "relay_webhook_delivery_made"
RESERVED = "relay_webhook_delivery_reserved"  # Session.info: a Handover
_ENDPOINTS_CHANGED = "relay_webhook_endpoints_changed"
_GENERATION = "relay_webhook_endpoints_generation"


@dataclass(frozen=True, slots=True)
class Route:
    """An enabled endpoint as fan-out sees it. ``events``: the types it wants (None: all)."""

    id: str
    project_id: str
    events: frozenset[str] | None
    url: str
    secrets: Secrets

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> Route:
        events = None if endpoint.events is None else frozenset(endpoint.events)
        return cls(endpoint.id, endpoint.project_id, events, endpoint.url, endpoint.secrets())


# A delivery's row (to insert), its event and its endpoint.
Made = tuple[dict[str, Any], AnyEvent, Route]


class Taker(Protocol):
    """A delivery worker as the hooks see it (:class:`relay.events.DeliveryWorker`)."""

    def reserve(self, session: Session, made: Sequence[Made], now: datetime) -> int: ...

    def wake(self, *, claim: bool = False) -> None: ...


class Handover(Protocol):
    """What a worker claimed in an open transaction, kept in its ``Session.info[RESERVED]``."""

    def take(self) -> None: ...  # the transaction committed: send them

    def drop(self) -> None: ...  # it rolled back: forget them


_workers: dict[object, list[Taker]] = {}  # engine -> this process's workers on it


def add_worker(engine: object, worker: Taker) -> None:
    """``worker`` claims the deliveries made in transactions on ``engine``."""
    _workers.setdefault(engine, []).append(worker)


def remove_worker(engine: object, worker: Taker) -> None:
    workers = _workers.get(engine, [])
    if worker in workers:
        workers.remove(worker)


class _Routes:
    """Each project's enabled endpoints, kept in memory on SQLite: one process owns the
    file and every endpoint change goes through this process's ORM, so a commit that
    changed an endpoint drops them all (``generation`` moves on). A transaction begun before
    such a commit may have read the old endpoints: what it read is not kept. (PostgreSQL:
    other nodes change endpoints, so each transaction reads them.)"""

    def __init__(self) -> None:
        self.generation = 0
        self.by_project: dict[tuple[object, str], tuple[Route, ...]] = {}

    def changed(self) -> None:
        self.generation += 1
        self.by_project.clear()

    def load(self, session: Session, project_ids: set[str]) -> list[Route]:
        bind = session.get_bind()
        cached = bind.dialect.name == "sqlite"
        found: list[Route] = []
        missing = set(project_ids)
        if cached:
            for project_id in project_ids:
                routes = self.by_project.get((bind, project_id))
                if routes is not None:
                    found.extend(routes)
                    missing.discard(project_id)
        if not missing:
            return found
        loaded = [
            Route.of(e)
            for e in session.execute(
                select(WebhookEndpoint).where(
                    WebhookEndpoint.project_id.in_(missing), WebhookEndpoint.enabled.is_(True)
                )
            ).scalars()
        ]
        found.extend(loaded)
        fresh = session.info.get(_GENERATION) == self.generation
        if cached and fresh and not session.info.get(_ENDPOINTS_CHANGED):
            if len(self.by_project) > 10_000:
                self.by_project.clear()
            for project_id in missing:
                self.by_project[(bind, project_id)] = tuple(
                    r for r in loaded if r.project_id == project_id
                )
        return found


_routes = _Routes()


def attach(db: Database) -> None:
    """Write the lifecycle events emitted in ``db``'s sessions (those of ``db.write``'s group
    commit included) and fan them out, in the emitting transaction. Call it once where the
    database is set up, before anything emits; again is a no-op."""
    sessions = db.session_class
    if sessions in ATTACHED:
        return
    event.listen(sessions, "before_flush", _before_flush)
    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_begin", _after_begin)
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_rollback", _after_rollback)
    ATTACHED.add(sessions)


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    """What the transaction emitted so far is written now (a flush makes the transaction's
    changes visible to its queries, events included); so is a LifecycleEvent added as an
    ORM object."""
    events: list[AnyEvent] = session.info.pop(EMITTED, [])
    added: list[LifecycleEvent] = []
    for obj in session.new:
        if isinstance(obj, LifecycleEvent) and obj.dispatched_at is None:
            added.append(obj)
        elif isinstance(obj, WebhookEndpoint):
            session.info[_ENDPOINTS_CHANGED] = True
    if any(isinstance(obj, WebhookEndpoint) for obj in (*session.dirty, *session.deleted)):
        session.info[_ENDPOINTS_CHANGED] = True
    for evt in added:  # written below, by a Core INSERT: not by the unit of work too
        session.expunge(evt)
    _dispatch(session, [*events, *added])


def _before_commit(session: Session) -> None:
    events: list[AnyEvent] | None = session.info.pop(EMITTED, None)
    if events:
        _dispatch(session, events)


def _dispatch(session: Session, events: list[AnyEvent]) -> None:
    """Write ``events`` with their deliveries, most of those claimed right here
    (:meth:`DeliveryWorker.reserve`): one INSERT for the events, one for the deliveries."""
    if not events:
        return
    events.sort(key=lambda e: (e.created_at, e.id))  # session.new has no order
    routes = _routes.load(session, {e.project_id for e in events})
    now = utcnow()
    made = fan_out(events, routes, now)
    insert_now(
        session,
        EVENTS,
        [
            {
                "id": e.id,
                "project_id": e.project_id,
                "type": e.type,
                "ordering_key": e.ordering_key,
                "data": e.data,
                "created_at": e.created_at,
                "dispatched_at": now,
            }
            for e in events
        ],
    )
    if not made:
        return
    workers = _workers.get(session.bind)
    left = workers[0].reserve(session, made, now) if workers else len(made)
    insert_now(session, DELIVERIES, [m[0] for m in made])
    if left:
        session.info[_MADE] = True


def _after_begin(session: Session, _transaction: Any, _connection: Any) -> None:
    session.info[_GENERATION] = _routes.generation


def _after_commit(session: Session) -> None:
    if session.info.pop(_ENDPOINTS_CHANGED, False):
        _routes.changed()
    reserved: Handover | None = session.info.pop(RESERVED, None)
    if reserved is not None:
        reserved.take()
    # The flush hook dispatched every event it saw: only deliveries it made and did not
    # hand to the worker are work for a claim. (Waking it for events with no endpoint cost
    # a write transaction each, two per text, all of them queued behind SQLite's one writer.)
    if session.info.pop(_MADE, False):
        for worker in _workers.get(session.bind, ()):
            worker.wake(claim=True)


def _after_rollback(session: Session) -> None:
    session.info.pop(EMITTED, None)
    session.info.pop(_MADE, None)
    session.info.pop(_ENDPOINTS_CHANGED, None)
    reserved: Handover | None = session.info.pop(RESERVED, None)
    if reserved is not None:
        reserved.drop()


def fan_out(events: Sequence[AnyEvent], endpoints: Sequence[Route], now: datetime) -> list[Made]:
    """Mark ``events`` dispatched; a delivery row per endpoint that wants each one."""
    by_project: dict[str, list[Route]] = {}
    for endpoint in endpoints:
        by_project.setdefault(endpoint.project_id, []).append(endpoint)
    made: list[Made] = []
    for evt in events:
        evt.dispatched_at = now
        for endpoint in by_project.get(evt.project_id, ()):
            if wants(endpoint, evt.type):
                delivery = {
                    "id": new_id("msg"),
                    "project_id": evt.project_id,
                    "endpoint_id": endpoint.id,
                    "event_id": evt.id,
                    "event_type": evt.type,
                    "ordering_key": evt.ordering_key,
                    "event_created_at": evt.created_at,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "claimed_by": None,
                    "created_at": now,
                }
                made.append((delivery, evt, endpoint))
    return made


def wants(endpoint: Route, event_type: str) -> bool:
    return endpoint.events is None or event_type in endpoint.events


async def fan_out_unsent(session: AsyncSession, now: datetime) -> tuple[int, int]:
    """Fan out up to ``FANOUT_BATCH`` events that no transaction fanned out (written some
    other way). Returns the events fanned out, and the deliveries made of them."""
    events = list(
        (
            await session.execute(
                select(LifecycleEvent)
                .where(LifecycleEvent.dispatched_at.is_(None))
                .order_by(LifecycleEvent.created_at, LifecycleEvent.id)
                .limit(FANOUT_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    if not events:
        return 0, 0
    endpoints = (
        await session.execute(
            select(WebhookEndpoint).where(
                WebhookEndpoint.project_id.in_({e.project_id for e in events}),
                WebhookEndpoint.enabled.is_(True),
            )
        )
    ).scalars()
    made = fan_out(events, [Route.of(e) for e in endpoints], now)
    if made:
        await session.execute(INSERT_DELIVERIES, [m[0] for m in made])
    await session.flush()
    return len(events), len(made)


__all__ = [
    "FANOUT_BATCH",
    "RESERVED",
    "Handover",
    "Made",
    "Route",
    "Taker",
    "add_worker",
    "attach",
    "fan_out",
    "fan_out_unsent",
    "remove_worker",
    "wants",
]
