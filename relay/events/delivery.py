"""Lifecycle webhooks: the outbox, delivered signed, retried, in order, at least once.

Fan-out happens where the event is written: the session's flush and commit hooks write the
events the transaction emitted (:class:`relay.events.Emitted`) with one
:class:`WebhookDelivery` each per enabled endpoint of its project that wants that type, and
mark them dispatched, in the emitting transaction. (Events written
some other way are fanned out by the worker.) So a state change commits together with its
deliveries.

Most deliveries are also claimed there (:meth:`DeliveryWorker.reserve`): inserted with this
node's lease and ``attempts=1``, and handed to the worker in memory when the transaction
commits, which sends them at once. Per endpoint and ordering key the worker sends through
one *lane* (a task sending one delivery after the other); a delivery joins its lane only when
nothing else of that endpoint and key is pending in the outbox, except what this lane is
sending and what was answered 2xx but is not yet recorded. Otherwise (an earlier delivery
waits for a retry, is leased by another node, the worker is at its concurrency) it stays in
the outbox for the claim below, which orders it. When a lane's delivery fails, the ones
behind it go back to the outbox unattempted. A crash leaves handed-over deliveries leased: the
restart (or the lease running out) makes them due again, with the same ``webhook-id``.

One worker loop per process. Each cycle is ONE short transaction that

1. writes back the outcomes of the requests that finished since the last cycle (those
   answered 2xx with one UPDATE for all),
2. on a sweep (see below), fans out lifecycle events still not dispatched,
3. when deliveries may wait in the outbox (a sweep, or outcomes while some were left there),
   claims due deliveries: pending, ``next_attempt_at`` passed, endpoint enabled, and no
   earlier delivery with the same ``ordering_key`` still pending for that endpoint (nor an
   earlier event of that key not yet fanned out). The deliveries queued behind each one
   (same endpoint and key) are claimed with it and sent right after it, in order, by one
   task. A claim is a lease: ``next_attempt_at`` moves past the request timeout and
   ``claimed_by`` names this node.

Claimed deliveries are then sent concurrently, outside any transaction. A relay that dies
between a send and its write-back sends the delivery again after restarting (or when the
lease runs out, on another node), with the same ``webhook-id``: receivers deduplicate on it.

On PostgreSQL the fan-out and the claim use ``FOR UPDATE SKIP LOCKED``, so several nodes
share the work. On SQLite one relay process owns the database file. Work this process did
not make (other nodes, expired leases) is found by polling every
``RELAY_WEBHOOK_DELIVERY_POLL_SECONDS`` (due deliveries and events not fanned out: at most
once a second).

Outcomes: a 2xx answer within the timeout delivers. 410 Gone disables the endpoint (its
pending deliveries wait until it is enabled again). 429 and 503 honour ``Retry-After``.
Anything else is retried on ``RELAY_WEBHOOK_RETRY_SCHEDULE`` with +-10% jitter; after the
last attempt the delivery is ``failed`` and can be retried by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import (
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    event,
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

from relay.config import Settings
from relay.events import EMITTED, Emitted
from relay.events.writing import writing
from relay.ids import new_id
from relay.logs import get_logger
from relay.signing import signature_headers
from relay.store.db import Database, insert_now
from relay.store.models import (
    Base,
    LifecycleEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

log = get_logger("relay.events.delivery")

USER_AGENT = "conversation-relay-webhooks/0.1"
FANOUT_BATCH = 500
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
JITTER = 0.1
ERROR_BODY_BYTES = 200
STOP_GRACE_SECONDS = 5.0
# How often a node looks for due deliveries nobody told it about (see ``cycle``): every
# second while sweeps find some, backing off to IDLE_SWEEP_SECONDS while they find none. On
# SQLite the sweep's queries run on the event loop (2-8 ms), which the calls' audio and turns
# share: a node with nothing to find need not stop its loop for it every second.
CLAIM_SWEEP_SECONDS = 1.0
IDLE_SWEEP_SECONDS = 5.0
# Deliveries of one ordering key sent back to back by one task (see ``_followers``).
MAX_CHAIN = 20
# How long a 2xx outcome may wait to be recorded with the ones that follow it.
RECORD_SECONDS = 0.05

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
DELIVERY_STATUSES = (PENDING, SUCCEEDED, FAILED)


# --- fan-out in the emitting transaction, and waking the worker on commit ----------------

_workers: dict[object, list[DeliveryWorker]] = {}  # engine -> this process's workers on it
_MADE = "relay_webhook_delivery_made"
_RESERVED = "relay_webhook_delivery_reserved"
_ENDPOINTS_CHANGED = "relay_webhook_endpoints_changed"
_GENERATION = "relay_webhook_endpoints_generation"


@dataclass(frozen=True, slots=True)
class Route:
    """An enabled endpoint as fan-out sees it. ``events``: the types it wants (None: all)."""

    id: str
    project_id: str
    events: frozenset[str] | None
    url: str
    secret: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> Route:
        events = None if endpoint.events is None else frozenset(endpoint.events)
        return cls(endpoint.id, endpoint.project_id, events, endpoint.url, endpoint.secret)


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
        _events,
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
    insert_now(session, _deliveries, [m[0] for m in made])
    if left:
        session.info[_MADE] = True


def _after_begin(session: Session, _transaction: Any, _connection: Any) -> None:
    session.info[_GENERATION] = _routes.generation


def _after_commit(session: Session) -> None:
    if session.info.pop(_ENDPOINTS_CHANGED, False):
        _routes.changed()
    reserved: Reserved | None = session.info.pop(_RESERVED, None)
    if reserved is not None:
        reserved.worker.take(reserved)
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
    reserved: Reserved | None = session.info.pop(_RESERVED, None)
    if reserved is not None:
        reserved.drop()


event.listen(Session, "before_flush", _before_flush)
event.listen(Session, "before_commit", _before_commit)
event.listen(Session, "after_begin", _after_begin)
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _after_rollback)


# An event being fanned out: emitted in this transaction, or read back from the table.
AnyEvent = Emitted | LifecycleEvent
# A delivery's row (to insert), its event and its endpoint.
Made = tuple[dict[str, Any], AnyEvent, Route]


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


# --- the payload -------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_body(evt: AnyEvent) -> str:
    """What a receiver gets: the same bytes on every attempt."""
    return json.dumps(
        {"type": evt.type, "id": evt.id, "timestamp": iso(evt.created_at), "data": evt.data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def wants(endpoint: Route, event_type: str) -> bool:
    return endpoint.events is None or event_type in endpoint.events


# --- one request and its outcome ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: str
    endpoint_id: str
    attempt: int
    url: str
    secret: str
    body: str
    ordering_key: str | None = None

    @property
    def lane(self) -> tuple[str, str] | None:
        return None if self.ordering_key is None else (self.endpoint_id, self.ordering_key)


@dataclass(frozen=True, slots=True)
class Outcome:
    job: Job
    started_at: datetime
    latency_ms: int
    status_code: int | None
    error: str | None
    retry_after: float | None
    sent: bool = True  # False: its chain stopped before it; it was never attempted

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


class Lane:
    """The deliveries of one endpoint and ordering key that this node sends, one after the
    other, by one task. ``ids``: those not yet answered 2xx (pending in the database);
    ``broken``: one failed, so nothing more may join (the rest went back to the outbox)."""

    __slots__ = ("broken", "ids", "jobs")

    def __init__(self, jobs: Sequence[Job] = ()) -> None:
        self.jobs: deque[Job] = deque(jobs)
        self.ids: set[str] = {j.delivery_id for j in jobs}
        self.broken = False


@dataclass(slots=True)
class Reservation:
    """Deliveries of one lane claimed in an open transaction; ``behind``: the lane they
    will join after the commit (None: they start one)."""

    behind: Lane | None
    jobs: list[Job] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


# Lanes that an open transaction has claimed deliveries for: another transaction may not
# claim for the same lane until it ends (the claim sweep orders what they made instead).
_reserving: dict[tuple[str, str], object] = {}


@dataclass(slots=True)
class Reserved:
    """What one transaction claimed in the emitting transaction, for its worker."""

    worker: DeliveryWorker
    session: object
    lanes: dict[tuple[str, str], Reservation] = field(default_factory=dict)
    single: list[Job] = field(default_factory=list)

    def drop(self) -> None:
        for key in self.lanes:
            if _reserving.get(key) is self.session:
                del _reserving[key]


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_SECONDS)


def next_delay(schedule: Sequence[float], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after ``attempts`` tries, or None when none is left."""
    if attempts >= len(schedule):
        return None
    if retry_after is not None:
        return retry_after
    base = schedule[attempts]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


async def send(http: aiohttp.ClientSession, job: Job, limit_seconds: float) -> Outcome:
    headers = signature_headers(job.body, [job.secret], msg_id=job.delivery_id)
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = USER_AGENT
    started = utcnow()
    t0 = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        async with http.post(
            job.url,
            data=job.body.encode(),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit_seconds),
        ) as resp:
            status = resp.status
            if not 200 <= status < 300:
                snippet = (await resp.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")
                error = f"HTTP {status}" + (f": {snippet.strip()}" if snippet.strip() else "")
                if status in (429, 503):
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
    except TimeoutError:
        error = f"no answer within {limit_seconds:g} s"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = round((time.perf_counter() - t0) * 1000)
    return Outcome(job, started, latency, status, error, retry_after)


# --- the worker --------------------------------------------------------------------------


class DeliveryWorker:
    """The per-process delivery loop. ``start`` after migrations, ``stop`` on shutdown."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        node_id: str,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.schedule = settings.retry_schedule()
        self.timeout = settings.webhook_delivery_timeout_seconds
        self.poll = settings.webhook_delivery_poll_seconds
        self.concurrency = settings.webhook_delivery_concurrency
        self.lease = timedelta(seconds=self.timeout * 2 + 5)
        self._http = http
        self._own_http = http is None
        self._wake = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._claim_anyway = True  # the first cycle looks for everything that is due
        self._next_due = math.inf  # the earliest retry this process scheduled (monotonic)
        self._next_sweep = 0.0
        self._sweep_every = CLAIM_SWEEP_SECONDS
        self._lanes: dict[tuple[str, str], Lane] = {}  # being sent by this node, in order
        self._settled: set[str] = set()  # answered 2xx, not yet recorded
        # Deliveries may be due that no transaction handed over (see ``_more_due``).
        self._backlog = True
        self._backlog_mark = 0
        self._closed = False
        self._record_timer: asyncio.TimerHandle | None = None

    def wake(self, *, claim: bool = False) -> None:
        """Run a cycle now. ``claim``: look for due deliveries even if this process made
        none due (a delivery retried by hand, an endpoint enabled again)."""
        if claim:
            self._claim_anyway = True
        self._wake.set()

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=60)
            )
        _workers.setdefault(self.db.engine.sync_engine, []).append(self)
        self._loop = asyncio.create_task(self._run(), name="webhook-delivery")
        log.info("delivery_worker_started", node_id=self.node_id, schedule=self.schedule)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Deliver what is ready (for up to ``grace`` seconds: the calls ended by shutdown
        have just emitted their events), record the outcomes, then stop. Whatever is left
        stays in the outbox for the next start."""
        workers = _workers.get(self.db.engine.sync_engine, [])
        if self in workers:
            workers.remove(self)
        if self._loop is not None:
            # Never cancel a cycle half way through its transaction: ask the loop to stop.
            self._stopping = True
            self._wake.set()
            await self._loop
            self._loop = None
        deadline = time.monotonic() + grace
        self._claim_anyway = True
        with contextlib.suppress(Exception):
            while (left := deadline - time.monotonic()) > 0:
                chains, _busy = await self.cycle()
                for chain in chains:
                    self._spawn(chain)
                if not self._sending:
                    break
                await asyncio.wait(list(self._sending), timeout=left)
        self._closed = True
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        for task in list(self._sending):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.cycle(claim=False)
        if self._own_http and self._http is not None:
            await self._http.close()
        log.info("delivery_worker_stopped", node_id=self.node_id)

    def _spawn(self, chain: Sequence[Job]) -> None:
        lane = Lane(chain)
        key = chain[0].lane
        if key is not None and key not in self._lanes:
            self._lanes[key] = lane  # later deliveries of its key may join it
        task = asyncio.create_task(self._send(key, lane), name=f"deliver:{chain[0].delivery_id}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _record_soon(self) -> None:
        self._record_timer = None
        self._wake.set()

    def _more_due(self) -> None:
        """Deliveries may wait in the outbox unclaimed: claim after the next outcomes too."""
        self._backlog = True
        self._backlog_mark += 1

    def _release(self, jobs: Sequence[Job]) -> None:
        """Claimed but not to be sent by this lane: back to the outbox, unattempted."""
        if jobs:
            self._outcomes.extend(Outcome(j, utcnow(), 0, None, None, None, False) for j in jobs)
            self._more_due()
            self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            wait = min(self.poll, max(0.0, self._next_due - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._stopping:
                return
            self._wake.clear()
            try:
                chains, busy = await self.cycle()
                failures = 0
            except Exception as exc:  # the loop must outlive a database hiccup
                failures += 1
                log.warning("delivery_cycle_failed", error=repr(exc), failures=failures)
                await asyncio.sleep(min(0.05 * 2**failures, 5.0))
                continue
            for chain in chains:
                self._spawn(chain)
            if busy:
                self._wake.set()

    async def _send(self, key: tuple[str, str] | None, lane: Lane) -> None:
        """Send a lane's deliveries one after the other, also those that join it meanwhile;
        the first failure ends it, and the rest go back unattempted behind it."""
        assert self._http is not None
        try:
            while lane.jobs:
                job = lane.jobs.popleft()
                outcome = await send(self._http, job, self.timeout)
                self._outcomes.append(outcome)
                if outcome.ok:
                    if self._backlog:
                        self._wake.set()  # deliveries may wait behind this one
                    elif self._record_timer is None:
                        # Recorded a little later, with the others answered meanwhile.
                        self._record_timer = asyncio.get_running_loop().call_later(
                            RECORD_SECONDS, self._record_soon
                        )
                    lane.ids.discard(job.delivery_id)
                    self._settled.add(job.delivery_id)
                    continue
                lane.broken = True
                log.info(
                    "webhook_attempt_failed",
                    delivery_id=job.delivery_id,
                    endpoint_id=job.endpoint_id,
                    attempt=job.attempt,
                    status=outcome.status_code,
                    error=outcome.error,
                )
                self._release(list(lane.jobs))
                lane.jobs.clear()
                self._more_due()
                self._wake.set()
        except BaseException:
            lane.broken = True
            raise
        finally:
            # Synchronously with its last step: a lane in ``_lanes`` always has a task that
            # will send what joins it.
            if key is not None and self._lanes.get(key) is lane:
                del self._lanes[key]

    # --- claimed in the emitting transaction ----------------------------------------------

    def reserve(self, session: Session, made: Sequence[Made], now: datetime) -> int:
        """Claim deliveries being made, in the transaction that makes them, so they are sent
        the moment it commits (:meth:`take`), not after a claim in a transaction of the
        worker's own. A delivery with an ordering key is claimed here only when nothing of its
        lane (endpoint and key) waits before it: every other pending delivery of that lane is
        one this node is sending in order, or has sent (2xx) but not yet recorded. Returns
        how many were left for the claim."""
        if self._stopping or self._loop is None:
            return len(made)
        reserved: Reserved | None = session.info.get(_RESERVED)
        if reserved is None:
            reserved = session.info[_RESERVED] = Reserved(self, session)
        new_lanes = sum(1 for r in reserved.lanes.values() if r.behind is None)
        room = self.concurrency - len(self._sending) - len(reserved.single) - new_lanes
        until = now + self.lease
        left = 0
        groups: dict[tuple[str, str], list[Made]] = {}
        for item in made:
            delivery = item[0]
            if delivery["ordering_key"] is not None:
                key = (delivery["endpoint_id"], delivery["ordering_key"])
                groups.setdefault(key, []).append(item)
            elif room > 0:
                room -= 1
                reserved.single.append(self._claim_made(item, until))
            else:
                left += 1
        blocked = self._waiting(session, reserved, groups)
        for key, items in groups.items():
            res = reserved.lanes.get(key)
            if key not in blocked and res is None and key not in self._lanes:
                if room > 0:
                    room -= 1
                else:
                    blocked.add(key)
            if key in blocked:
                left += len(items)
                continue
            if res is None:
                res = reserved.lanes[key] = Reservation(self._lanes.get(key))
                _reserving[key] = session
            for item in items:
                job = self._claim_made(item, until)
                res.jobs.append(job)
                res.ids.add(job.delivery_id)
        if left:
            self._more_due()
        return left

    def _waiting(
        self, session: Session, reserved: Reserved, groups: dict[tuple[str, str], list[Made]]
    ) -> set[tuple[str, str]]:
        """The lanes of ``groups`` that something else waits in (see :meth:`reserve`)."""
        blocked = {key for key in groups if _reserving.get(key, session) is not session}
        # A key that names a row this transaction inserts (the call it opens) has nothing
        # before it.
        fresh = {getattr(obj, "id", None) for obj in session.new}
        check = [key for key in groups if key not in blocked and key[1] not in fresh]
        if not check:
            return blocked
        # Two INs, not one of (endpoint, key) pairs: SQLite uses the index only for these.
        rows = session.execute(
            _PENDING_IN_LANES,
            {"b_endpoints": list({k[0] for k in check}), "b_keys": list({k[1] for k in check})},
        )
        for delivery_id, endpoint_id, ordering_key in rows:
            key = (endpoint_id, ordering_key or "")
            if key not in groups or delivery_id in self._settled:
                continue
            res = reserved.lanes.get(key)
            if res is not None and delivery_id in res.ids:
                continue
            lane = res.behind if res is not None else self._lanes.get(key)
            if lane is not None and delivery_id in lane.ids:
                continue
            blocked.add(key)
        return blocked

    def _claim_made(self, item: Made, until: datetime) -> Job:
        delivery, evt, route = item
        delivery["attempts"] = 1
        delivery["claimed_by"] = self.node_id
        delivery["next_attempt_at"] = until
        return Job(
            delivery["id"], route.id, 1, route.url, route.secret, event_body(evt), evt.ordering_key
        )

    def take(self, reserved: Reserved) -> None:
        """After the commit: send what ``reserved`` claimed, joining the lanes it was claimed
        behind. If such a lane broke meanwhile (or another took its place), the deliveries go
        back to the outbox, to be claimed behind the failed one. After :meth:`stop` they stay
        leased: the next start (or the lease running out) hands them out again."""
        reserved.drop()
        if self._closed:
            return
        for job in reserved.single:
            self._spawn([job])
        for key, res in reserved.lanes.items():
            lane, behind = self._lanes.get(key), res.behind
            if behind is not None and behind.broken:
                self._release(res.jobs)
            elif lane is not None and lane is behind:
                lane.jobs.extend(res.jobs)
                lane.ids.update(res.ids)
            elif lane is None:  # a new lane, or the one it joined sent everything
                self._spawn(res.jobs)
            else:  # a claim started the lane meanwhile: line up behind it in the outbox
                self._release(res.jobs)

    async def cycle(self, *, claim: bool = True) -> tuple[list[list[Job]], bool]:
        """One transaction: record outcomes, fan out, claim. Returns the claimed chains and
        whether more work is waiting right now."""
        outcomes, self._outcomes = self._outcomes, []
        # Looking for due deliveries is the expensive query. It is needed when this cycle
        # creates or settles deliveries, when a retry this process scheduled falls due, and
        # now and then for work that other nodes (or their expired leases) left due.
        tick = time.monotonic()
        sweep = self._claim_anyway or tick >= self._next_due or tick >= self._next_sweep
        self._claim_anyway = False
        if not outcomes and not (claim and sweep):
            return [], False  # nothing to record or look for: no transaction
        mark = self._backlog_mark
        try:
            async with writing(self.db) as session:
                now = utcnow()
                await self._record(session, outcomes, now)
                # Events are fanned out where they are written (``_before_flush``): this
                # query only finds those written some other way.
                fanned, made = await self._fan_out(session, now) if claim and sweep else (0, 0)
                room = self.concurrency - len(self._sending)
                # After outcomes, claim only if deliveries may be waiting behind them: most
                # were handed over by the transaction that made them.
                after = bool(outcomes) and self._backlog
                look = claim and room > 0 and (sweep or made > 0 or after)
                chains = await self._claim(session, now, room) if look else []
        except BaseException:
            self._outcomes[:0] = outcomes  # not recorded: keep them for the next cycle
            self._claim_anyway = self._claim_anyway or sweep
            raise
        self._settled.difference_update(o.job.delivery_id for o in outcomes if o.sent and o.ok)
        if look:
            if tick >= self._next_due:
                self._next_due = math.inf
            if sweep:
                found = bool(chains or fanned or outcomes)
                self._sweep_every = (
                    CLAIM_SWEEP_SECONDS if found else min(IDLE_SWEEP_SECONDS, self._sweep_every * 2)
                )
                self._next_sweep = tick + self._sweep_every
            if chains:
                self._more_due()  # more may be lined up behind them
            elif not (self._sending or self._outcomes) and self._backlog_mark == mark:
                self._backlog = False  # nothing due is left that this node could send
        if fanned >= FANOUT_BATCH:
            self._claim_anyway = True
        return chains, fanned >= FANOUT_BATCH or (room > 0 and len(chains) >= room)

    async def _record(self, session: AsyncSession, outcomes: list[Outcome], now: datetime) -> None:
        delivered = [o for o in outcomes if o.sent and o.ok]
        if delivered:
            await self._record_delivered(session, delivered, now)
        if len(delivered) < len(outcomes):
            await self._record_others(session, [o for o in outcomes if not (o.sent and o.ok)], now)

    async def _record_delivered(
        self, session: AsyncSession, outcomes: list[Outcome], now: datetime
    ) -> None:
        """The common case, in two statements for any number: the attempts (of deliveries
        that still exist: an endpoint may have been deleted), and each delivery ``succeeded``
        if still ours (not retried by hand nor re-claimed)."""
        node = self.node_id
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
                {"b_id": o.job.delivery_id, "b_code": o.status_code, "b_now": now, "b_node": node}
                for o in outcomes
            ],
        )

    async def _record_others(
        self, session: AsyncSession, outcomes: list[Outcome], now: datetime
    ) -> None:
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
                if delivery.claimed_by == self.node_id and delivery.status == PENDING:
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
            if delivery.claimed_by != self.node_id or delivery.status != PENDING:
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
                delay = next_delay(self.schedule, delivery.attempts, o.retry_after)
                if delay is None:
                    delivery.status = FAILED
                else:
                    delivery.next_attempt_at = now + timedelta(seconds=delay)
                    self._next_due = min(self._next_due, time.monotonic() + delay)

    async def _fan_out(self, session: AsyncSession, now: datetime) -> tuple[int, int]:
        """Events fanned out, and deliveries made of them."""
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
            await session.execute(_INSERT_DELIVERIES, [m[0] for m in made])
        await session.flush()
        return len(events), len(made)

    async def _claim(self, session: AsyncSession, now: datetime, limit: int) -> list[list[Job]]:
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
        if not self.db.is_sqlite:
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
                select(d, WebhookEndpoint.url, WebhookEndpoint.secret, LifecycleEvent)
                .join(WebhookEndpoint, WebhookEndpoint.id == d.endpoint_id)
                .join(LifecycleEvent, LifecycleEvent.id == d.event_id)
                .where(*conditions)
                .order_by(d.next_attempt_at, d.event_created_at)
                .limit(limit)
                .with_for_update(skip_locked=True, of=d)
            )
        ).all()
        followers = await self._followers(session, [h[0] for h in heads])
        lease_until = now + self.lease
        chains = []
        for delivery, url, secret, evt in heads:
            chain = []
            for member, member_evt in [(delivery, evt), *followers.get(delivery.id, [])]:
                if member is not delivery and (
                    member.claimed_by is not None or member.next_attempt_at > now
                ):
                    break
                member.attempts += 1
                member.claimed_by = self.node_id
                member.next_attempt_at = lease_until
                chain.append(
                    Job(
                        member.id,
                        member.endpoint_id,
                        member.attempts,
                        url,
                        secret,
                        event_body(member_evt),
                        member.ordering_key,
                    )
                )
            chains.append(chain)
        return chains

    async def _followers(
        self, session: AsyncSession, heads: list[WebhookDelivery]
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


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_deliveries = _table(WebhookDelivery)
_events = _table(LifecycleEvent)
_INSERT_DELIVERIES = insert(_deliveries)
_attempts = _table(WebhookAttempt)
_INSERT_ATTEMPT = insert(_attempts).from_select(
    ["id", "delivery_id", "number", "started_at", "status_code", "latency_ms"],
    select(
        bindparam("b_aid", type_=String),
        _deliveries.c.id,
        bindparam("b_number", type_=Integer),
        bindparam("b_started", type_=_attempts.c.started_at.type),
        bindparam("b_code", type_=Integer),
        bindparam("b_latency", type_=Integer),
    ).where(_deliveries.c.id == bindparam("b_id")),
)
# Built once, values as parameters: each execute reuses the compiled statement.
_ours = and_(
    _deliveries.c.claimed_by == bindparam("b_node", type_=String), _deliveries.c.status == PENDING
)
_PENDING_IN_LANES = select(
    _deliveries.c.id, _deliveries.c.endpoint_id, _deliveries.c.ordering_key
).where(
    _deliveries.c.endpoint_id.in_(bindparam("b_endpoints", expanding=True)),
    _deliveries.c.ordering_key.in_(bindparam("b_keys", expanding=True)),
    _deliveries.c.status == PENDING,
)
_DELIVERED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_id"))
    .values(
        last_status_code=bindparam("b_code"),
        last_error=None,
        status=case((_ours, SUCCEEDED), else_=_deliveries.c.status),
        delivered_at=case(
            (_ours, bindparam("b_now", type_=_deliveries.c.delivered_at.type)),
            else_=_deliveries.c.delivered_at,
        ),
        claimed_by=case((_ours, null()), else_=_deliveries.c.claimed_by),
    )
)


async def release_leases(db: Database, node_id: str) -> int:
    """Make deliveries leased by ``node_id`` (a previous life of this node) due now."""
    async with db.session() as session:
        result = await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.claimed_by == node_id)
            .values(claimed_by=None, next_attempt_at=utcnow())
        )
    return int(getattr(result, "rowcount", 0) or 0)


DELIVERY: web.AppKey[DeliveryWorker] = web.AppKey("relay_delivery", DeliveryWorker)

__all__ = [
    "DELIVERY",
    "DELIVERY_STATUSES",
    "DeliveryWorker",
    "Outcome",
    "event_body",
    "next_delay",
    "release_leases",
    "retry_after_seconds",
]
