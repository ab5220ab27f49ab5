"""The dialling queue: every outbound call, single or in a batch, is dialled through it.

A :class:`~relay.store.models.DialJob` is one recipient. It is ``waiting`` until its
``not_before``; a node *claims* it (``active``) when the project has room under its
``maxConcurrentCalls`` (and its batch under ``maxConcurrency``), in one transaction that
locks the project row (``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL: another node claiming
for the same project skips it rather than waits; SQLite has one writer, so a plain claim). A
batch recipient's call is created in that same transaction, after the calling hours (a
recipient outside them waits for the next legal window) and the do-not-call list (skipped,
``dnc_conflict``) were checked; and in that transaction each claimed call is taken for this
node (:func:`relay.calls.outbound.take`: its lease held, ``connecting``), so no other node
can dial it. Once it committed, the node's :class:`~relay.calls.outbound.Dialler` rings them.

When the job's call ends, its outcome (``completed``, a retry by the batch's policy on
``busy``, ``no_answer``, ``failed``, or ``failed``) is recorded in the transaction that ended
it when the dialler ended it (:meth:`DialQueue.settle_call`), else by :meth:`DialQueue.settle`.

The queue claims when woken: a call or batch enqueued (:meth:`DialQueue.wake`), an outbound
call ended in this process (seen as its transaction commits). Every ``interval`` it also
polls for what no event here tells of: calls ended on other nodes, due retries and windows.

Crashes: a call claimed by a node that died (ringing or not yet) is closed by
:mod:`relay.calls.recovery` (``relay_restart``) and counts as an attempt, retried only if
the policy retries ``failed``. A claimed job whose call is still ``queued`` and unheld (left
by a relay from before claims took their calls) is dialled by a live node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy import event, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relay.calls import batches
from relay.calls.dial_jobs import (
    ACTIVE,
    ENDED,
    FINAL,
    JOB_OF_CALL,
    WAITING,
    Lane,
    Stats,
    batch_call,
    batch_of,
    due_lanes,
    end_job,
    enqueue_call,
    lane_of,
    ready_jobs,
    ready_singles,
    retry_kind,
    settle_job,
    stats,
)
from relay.calls.dial_rate import SharedRate
from relay.calls.lifecycle import ENDED_OUTBOUND
from relay.calls.outbound import Claimed, take
from relay.calls.recovery import lock_call
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import (
    Batch,
    Call,
    CallLease,
    DialJob,
    Number,
    Project,
    RelayNode,
    utcnow,
)

log = get_logger("relay.calls.dial_queue")

# How many jobs one claim takes for a project with no cap; the next tick takes more.
UNCAPPED_CLAIM = 50
# How long the queue, woken by a call's end, waits for more ends before it claims.
GATHER_ENDS_SECONDS = 0.02
# Session.info: the projects whose jobs settle_call settled in its transaction.
_SETTLED = "relay_dial_jobs_settled"
Dial = Callable[[Claimed], None]


class DialQueue:
    """This node's claimer: ``tick()`` settles ended calls, claims what may ring now and
    hands it to ``dial``. ``start()`` runs it when woken (a call enqueued, :meth:`wake`; an
    outbound call ended in this process, seen as its transaction commits) and, for what
    no event here tells of (other nodes, due times, crashes), every ``interval`` seconds."""

    def __init__(
        self,
        db: Database,
        dial: Dial,
        dialling: Callable[[str], bool],
        *,
        node_id: str,
        node_timeout: float,
        interval: float = 1.0,
        dial_rate: float = 0.0,
    ) -> None:
        self.db = db
        self.dial = dial
        self.dialling = dialling
        self.node_id = node_id
        self.node_timeout = node_timeout
        self.interval = interval
        # Calls started per second and carrier, at most, by all the relays on the database
        # (0: no limit): a carrier account's calls-per-second limit (relay.calls.dial_rate).
        self._rate = SharedRate(dial_rate)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_adoption = 0.0
        # What woke the loop: projects with calls enqueued, and whether calls ended.
        self._projects: set[str] = set()
        self._ended = False
        self._next_poll = 0.0  # the next durable poll (time.monotonic())
        self._asked = asyncio.Event()  # wake(): an API client may be waiting, claim at once
        self._asked.set()

    def wake(self, project_id: str | None = None) -> None:
        """Claim for ``project_id`` now (None: look at every project)."""
        if project_id is None:
            self._next_poll = 0.0
        else:
            self._projects.add(project_id)
        self._asked.set()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            event.listen(self.db.session_class, "after_commit", self._committed)
            self._task = asyncio.create_task(self._loop(), name="dial-queue")

    async def stop(self) -> None:
        self._stop.set()  # not cancel(): a tick may be inside a transaction
        self._asked.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
            event.remove(self.db.session_class, "after_commit", self._committed)

    def _committed(self, session: Session) -> None:
        # Runs on the loop's thread (the async session's greenlet), inside the commit.
        ended = session.info.pop(ENDED_OUTBOUND, None)
        settled = session.info.pop(_SETTLED, None)
        if ended:  # calls whose jobs are still open: settle, then claim
            self._ended = True
        if settled:  # jobs settled with their calls: room to claim into
            self._projects |= settled
        if ended or settled:
            self._wake.set()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._asked.is_set():
                # Woken by calls ending (or the poll): let the calls ending with it end too,
                # and claim their room in one transaction rather than one each; a call just
                # enqueued (wake) is claimed at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._asked.wait(), GATHER_ENDS_SECONDS)
            self._wake.clear()
            self._asked.clear()
            now = time.monotonic()
            full = now >= self._next_poll
            if full:
                self._next_poll = now + self.interval
            try:
                await self.tick(full=full)
            except Exception as exc:  # the loop must outlive a database hiccup
                log.warning("dial_queue_tick_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                left = max(0.0, self._next_poll - time.monotonic())
                await asyncio.wait_for(self._wake.wait(), left)

    async def tick(self, *, full: bool = True) -> list[str]:
        """One round; returns the call ids handed to the dialler. ``full``: settle and look
        at every project (the durable poll); else only what woke the queue."""
        # The projects that just enqueued calls first, and again between the round's other
        # steps: an API client waits on those.
        dialled = await self._claim_woken()
        more: set[str] = set()
        if full or self._ended:
            self._ended = False
            more |= await self.settle()
            dialled.extend(await self._claim_woken())
        if time.monotonic() >= self._next_adoption:
            # Crash recovery, not the fast path: as often as the heartbeat.
            self._next_adoption = time.monotonic() + self.node_timeout / 3
            dialled.extend(await self.adopt())
            dialled.extend(await self._claim_woken())
        if full:
            more |= set(await self._due_projects())
            await self.finish_batches()
            dialled.extend(await self._claim_woken())
        dialled.extend(await self._claim_for(more))
        return dialled

    async def _claim_woken(self) -> list[str]:
        woken, self._projects = self._projects, set()
        return await self._claim_for(woken) if woken else []

    async def _claim_for(self, projects: set[str]) -> list[str]:
        dialled: list[str] = []
        for project_id in sorted(projects):
            claimed = await self.claim(project_id)
            for call in claimed:
                self.dial(call)
            if claimed:  # let the dials reach their carriers before this round goes on
                await asyncio.sleep(0)
            dialled.extend(c.call_id for c in claimed)
        return dialled

    async def take_in(self, call_ids: Sequence[str]) -> None:
        """Queue outbound calls that are ``queued`` with no job (stored before the queue
        existed); the rest are the queue's already. Recovery hands it what nobody dials."""
        if not call_ids:
            return
        async with writing(self.db) as session:
            queued = await session.execute(
                select(Call).where(
                    Call.id.in_(list(call_ids)),
                    Call.status == "queued",
                    ~exists().where(DialJob.call_id == Call.id),
                )
            )
            for call in queued.scalars():
                await enqueue_call(session, call)
        self.wake()

    # --- claiming ----------------------------------------------------------------------

    async def _due_projects(self) -> list[str]:
        async with self.db.session() as session:
            rows = await session.execute(
                select(DialJob.project_id)
                .where(DialJob.state == WAITING, DialJob.not_before <= utcnow())
                .distinct()
            )
            return list(rows.scalars())

    async def claim(self, project_id: str) -> list[Claimed]:
        """Claim what ``project_id`` may dial now: in the same transaction, each call is
        made (a batch recipient's), its lease held and moved to ``connecting``
        (:func:`relay.calls.outbound.take`). Returns the calls to dial once it committed."""
        async with writing(self.db) as session:
            project = (
                await session.execute(
                    select(Project)
                    .where(Project.id == project_id)
                    # NO KEY UPDATE: two claims exclude each other, but the key-share lock
                    # every transaction writing a row of the project takes (its foreign
                    # keys) does not make a claim skip the project.
                    .with_for_update(skip_locked=True, key_share=True)
                )
            ).scalar_one_or_none()
            if project is None:  # another node is claiming for it (or it is gone)
                return []
            now = utcnow()
            active, lanes = await due_lanes(session, project_id, now)
            cap = project.max_concurrent_calls
            room = UNCAPPED_CLAIM if cap is None else cap - sum(active.values())
            out: list[Claimed] = []
            for lane in lanes:
                if room <= 0:
                    break
                lane_room = room
                if lane is not None and lane.max_concurrency is not None:
                    lane_room = min(room, lane.max_concurrency - active.get(lane.id, 0))
                if lane_room <= 0:
                    continue
                if lane is None:
                    singles = await ready_singles(session, project_id, now, lane_room)
                    for single in singles:
                        claimed = await self._start_single(session, *single, now)
                        if claimed is not None:
                            out.append(claimed)
                            room -= 1
                    continue
                jobs = await ready_jobs(session, project_id, lane, now, lane_room)
                lane_info = await lane_of(session, project, lane, jobs)
                for job in jobs:
                    claimed = await self._start(session, lane_info, job, now)
                    if claimed is not None:
                        out.append(claimed)
                        room -= 1
        if out:
            log.info("dial_queue_claimed", project_id=project_id, calls=len(out))
        return out

    async def _start_single(
        self,
        session: AsyncSession,
        job: DialJob,
        call: Call,
        number: Number | None,
        held: str | None,
        now: datetime,
    ) -> Claimed | None:
        """Make a single call's ``job`` active and take its call, or tell why not."""
        job.updated_at = now
        if call.status != "queued":  # ended (or canceled) before its turn
            end_job(job, "completed" if call.status == "completed" else "failed")
            job.outcome = call.failure_reason
            return None
        if not await self._rate.take(session, call.connection_type):
            return None
        job.state, job.node_id, job.attempts = ACTIVE, self.node_id, job.attempts + 1
        # Held already (never by the queue's own claims): leave it to its holder.
        claimed = None if held else await take(session, call, number, self.node_id, new=True)
        if claimed is None and call.status == "failed":  # outside the calling hours
            end_job(job, "failed")
            job.outcome = call.failure_reason
        return claimed

    async def _start(
        self, session: AsyncSession, lane: Lane, job: DialJob, now: datetime
    ) -> Claimed | None:
        """Make a batch recipient's ``job`` active with a call to dial, or tell why not (it
        waits or ends)."""
        job.updated_at = now
        batch = lane.batch
        assert batch is not None
        call = await batch_call(
            session, lane, job, now, lambda carrier: self._rate.take(session, carrier)
        )
        if call is None:
            return None
        job.state, job.node_id, job.attempts = ACTIVE, self.node_id, job.attempts + 1
        job.call_id = call.id
        job.call_ids = [*job.call_ids, call.id]
        await batches.started(session, batch, now)
        # The recipient's calling hours and window were checked by batch_call, just now.
        return await take(session, call, lane.number, self.node_id, new=True, check_hours=False)

    # --- settling ----------------------------------------------------------------------

    async def settle(self) -> set[str]:
        """Record the outcome of every job whose call ended; returns their projects."""
        async with writing(self.db) as session:
            jobs = (
                await session.execute(
                    select(DialJob, Call)
                    .join(Call, Call.id == DialJob.call_id)
                    .where(DialJob.state.in_((WAITING, ACTIVE)), Call.status.in_(ENDED))
                    .limit(500)
                    .with_for_update(of=DialJob, skip_locked=True)
                )
            ).all()
            touched: dict[str, Batch] = {}
            now = utcnow()
            for job, call in jobs:
                batch = await batch_of(session, job)
                settle_job(job, call, batch, now)
                if batch is not None:
                    touched[batch.id] = batch
            for batch in touched.values():
                await batches.finish_if_done(session, batch, now)
        return {job.project_id for job, _ in jobs}

    async def settle_call(self, session: AsyncSession, call: Call) -> None:
        """Record the outcome of ``call``'s job in the transaction that just ended ``call``
        (the dialler's), instead of in one more; the queue claims into the room once it
        committed. A job another node is settling right now is left to it."""
        found = (await session.execute(JOB_OF_CALL, {"b_call": call.id})).first()
        if found is None:
            return
        job, batch, others_wait = found
        now = utcnow()
        settle_job(job, call, batch, now)
        if batch is not None and not others_wait and job.state != WAITING:
            await batches.finish_if_done(session, batch, now, none_waiting=True)
        session.info.get(ENDED_OUTBOUND, set()).discard(call.id)
        session.info.setdefault(_SETTLED, set()).add(job.project_id)

    async def finish_batches(self) -> int:
        """Complete the batches with no recipient open that are not completed yet: on
        PostgreSQL, two transactions settling a batch's last two jobs at once each see the
        other's still open, and neither completes it (locking the batch in each would
        serialize every settle of a batch behind each other)."""
        async with writing(self.db) as session:
            open_job = exists().where(DialJob.batch_id == Batch.id, DialJob.state.in_(batches.OPEN))
            found = await session.execute(
                select(Batch)
                .where(
                    Batch.completed_at.is_(None),
                    Batch.state.in_((*batches.DIALLING, "canceled")),
                    ~open_job,
                )
                .with_for_update(skip_locked=True)
            )
            done = 0
            now = utcnow()
            for batch in found.scalars().all():
                done += await batches.finish_if_done(session, batch, now)
        return done

    # --- crashes -----------------------------------------------------------------------

    async def adopt(self) -> list[str]:
        """Dial the claimed calls that never left ``queued`` and that nobody holds, whose
        claimer is dead (or is this node's previous life). A claim moves its calls to
        ``connecting`` in its own transaction, so only a relay before that change left
        such calls."""
        since = utcnow() - timedelta(seconds=self.node_timeout)
        out: list[Claimed] = []
        async with writing(self.db) as session:
            alive = select(RelayNode.id).where(
                RelayNode.heartbeat_at >= since, RelayNode.id != self.node_id
            )
            rows = await session.execute(
                select(DialJob)
                .join(Call, Call.id == DialJob.call_id)
                .where(
                    DialJob.state == ACTIVE,
                    Call.status == "queued",
                    ~exists().where(CallLease.call_id == Call.id),
                    or_(DialJob.node_id.is_(None), DialJob.node_id.not_in(alive)),
                )
                .with_for_update(of=DialJob, skip_locked=True)
            )
            for job in rows.scalars().all():
                if job.call_id is None or self.dialling(job.call_id):
                    continue
                call = await lock_call(session, job.call_id)
                if call is None or call.status != "queued":
                    continue
                job.node_id = self.node_id
                number = await session.get(Number, call.number_id) if call.number_id else None
                claimed = await take(session, call, number, self.node_id)
                if claimed is not None:
                    out.append(claimed)
        for claimed in out:
            self.dial(claimed)
        if out:
            log.warning("dial_queue_adopted", calls=len(out))
        return [c.call_id for c in out]


DIAL_QUEUE: web.AppKey[DialQueue] = web.AppKey("relay_dial_queue", DialQueue)

__all__ = [
    "DIAL_QUEUE",
    "FINAL",
    "DialQueue",
    "Stats",
    "enqueue_call",
    "retry_kind",
    "stats",
]
