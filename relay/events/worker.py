"""The delivery worker: sends lifecycle webhooks from the outbox, in order, at least once.

Most deliveries reach it without a query: the transaction that makes them claims them
(:meth:`DeliveryWorker.reserve`: inserted with this node's lease and ``attempts=1``) and
hands them over in memory when it commits, and they are sent at once. Per endpoint and
ordering key the worker sends through one *lane* (a task sending one delivery after the
other); a delivery joins its lane only when nothing else of that endpoint and key is pending
in the outbox, except what this lane is sending and what was answered 2xx but is not yet
recorded. Otherwise (an earlier delivery waits for a retry, is leased by another node, the
worker is at its concurrency) it stays in the outbox for a claim, which orders it. When a
lane's delivery fails, the ones behind it go back to the outbox unattempted. A crash leaves
handed-over deliveries leased: the restart (or the lease running out) makes them due again,
with the same ``webhook-id``.

One worker loop per process. Each cycle is ONE short transaction that

1. writes back the outcomes of the requests that finished since the last cycle (those
   answered 2xx with one UPDATE for all),
2. on a sweep (see below), fans out lifecycle events still not dispatched,
3. when deliveries may wait in the outbox (a sweep, or outcomes while some were left there),
   claims due deliveries with those queued behind them (:mod:`relay.events.outbox`).

Claimed deliveries are then sent concurrently, outside any transaction. Work this process did
not make (other nodes, expired leases) is found by polling every
``RELAY_WEBHOOK_DELIVERY_POLL_SECONDS`` (due deliveries and events not fanned out: at most
once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relay.config import Settings
from relay.egress import client_session
from relay.events import outbox
from relay.events.fanout import (
    FANOUT_BATCH,
    RESERVED,
    Made,
    add_worker,
    fan_out_unsent,
    remove_worker,
)
from relay.events.nudge import Nudges
from relay.events.wire import Job, Outcome, event_body, send
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import utcnow

log = get_logger("relay.events.delivery")

STOP_GRACE_SECONDS = 5.0
# How often a node looks for due deliveries nobody told it about (see ``cycle``): every
# second while sweeps find some, backing off to IDLE_SWEEP_SECONDS while they find none. On
# SQLite the sweep's queries run on the event loop (2-8 ms), which the calls' audio and turns
# share: a node with nothing to find need not stop its loop for it every second.
CLAIM_SWEEP_SECONDS = 1.0
IDLE_SWEEP_SECONDS = 5.0
# How long a 2xx outcome may wait to be recorded with the ones that follow it.
RECORD_SECONDS = 0.05


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

    def take(self) -> None:
        self.worker.take(self)

    def drop(self) -> None:
        for key in self.lanes:
            if _reserving.get(key) is self.session:
                del _reserving[key]


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
        self.settings = settings
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
        self._nudges: Nudges | None = None  # PostgreSQL: other nodes' word that work waits
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
            self._http = client_session(self.settings, limit=self.concurrency, ttl_dns_cache=60)
        if not self.db.is_sqlite:
            self._nudges = Nudges(self.db, self.node_id, self._nudged)
            await self._nudges.start()
        add_worker(self.db.engine.sync_engine, self)
        self._loop = asyncio.create_task(self._run(), name="webhook-delivery")
        log.info("delivery_worker_started", node_id=self.node_id, schedule=self.schedule)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Deliver what is ready (for up to ``grace`` seconds: the calls ended by shutdown
        have just emitted their events), record the outcomes, then stop. Whatever is left
        stays in the outbox for the next start."""
        remove_worker(self.db.engine.sync_engine, self)
        if self._nudges is not None:
            await self._nudges.stop()
            self._nudges = None
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

    def _nudged(self) -> None:
        """Another node made deliveries that wait behind one this node holds: record what is
        answered and claim now (and again after each answer, while they wait)."""
        self._more_due()
        self.wake(claim=True)

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
        reserved: Reserved | None = session.info.get(RESERVED)
        if reserved is None:
            reserved = session.info[RESERVED] = Reserved(self, session)
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
        holders: set[str] = set()
        blocked = self._waiting(session, reserved, groups, holders)
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
            if holders and self._nudges is not None:
                self._nudges.send(session, holders)  # they free those lanes (relay.events.nudge)
        return left

    def _waiting(
        self,
        session: Session,
        reserved: Reserved,
        groups: dict[tuple[str, str], list[Made]],
        holders: set[str],
    ) -> set[tuple[str, str]]:
        """The lanes of ``groups`` that something else waits in (see :meth:`reserve`); adds
        to ``holders`` the other nodes that hold what they wait behind."""
        blocked = {key for key in groups if _reserving.get(key, session) is not session}
        # A key that names a row this transaction inserts (the call it opens) has nothing
        # before it.
        fresh = {getattr(obj, "id", None) for obj in session.new}
        check = [key for key in groups if key not in blocked and key[1] not in fresh]
        if not check:
            return blocked
        rows = outbox.pending_in_lanes(
            session, list({k[0] for k in check}), list({k[1] for k in check})
        )
        for delivery_id, endpoint_id, ordering_key, claimed_by in rows:
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
            if claimed_by is not None and claimed_by != self.node_id:
                holders.add(claimed_by)
        return blocked

    def _claim_made(self, item: Made, until: datetime) -> Job:
        delivery, evt, route = item
        delivery["attempts"] = 1
        delivery["claimed_by"] = self.node_id
        delivery["next_attempt_at"] = until
        return Job(
            delivery["id"], route.id, 1, route.url, route.secrets, event_body(evt), evt.ordering_key
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
                # Events are fanned out where they are written (relay.events.fanout): this
                # query only finds those written some other way.
                fanned, made = await fan_out_unsent(session, now) if claim and sweep else (0, 0)
                room = self.concurrency - len(self._sending)
                # After outcomes, claim only if deliveries may be waiting behind them: most
                # were handed over by the transaction that made them.
                after = bool(outcomes) and self._backlog
                look = claim and room > 0 and (sweep or made > 0 or after)
                chains: list[list[Job]] = []
                if look:
                    chains = await outbox.claim(
                        session,
                        now,
                        room,
                        node_id=self.node_id,
                        lease=self.lease,
                        sqlite=self.db.is_sqlite,
                    )
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
            await outbox.record_delivered(session, delivered, now, self.node_id)
        if len(delivered) < len(outcomes):
            others = [o for o in outcomes if not (o.sent and o.ok)]
            due = await outbox.record_others(session, others, now, self.node_id, self.schedule)
            self._next_due = min(self._next_due, due)


DELIVERY: web.AppKey[DeliveryWorker] = web.AppKey("relay_delivery", DeliveryWorker)

__all__ = [
    "CLAIM_SWEEP_SECONDS",
    "DELIVERY",
    "IDLE_SWEEP_SECONDS",
    "DeliveryWorker",
    "Lane",
    "Reserved",
]
