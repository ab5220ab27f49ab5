"""Who holds a live call, and what happens to its calls when a relay process dies.

Every relay process is a *node* with a name (``RELAY_NODE_ID``, default ``hostname:port``,
so a restarted process has the name it had before) and a heartbeat row in ``relay_nodes``.
A node that runs a call holds a :class:`CallLease` on it (:func:`hold_call`).

On startup (:meth:`Recovery.start`) a node

* makes the webhook deliveries its previous life had in flight due again at once,
* closes as ``failed`` (reason ``relay_restart``) every live call (``connecting``,
  ``ringing``, ``in_progress``) whose lease names itself (its previous life) or a node
  whose heartbeat stopped; a live call with no lease at all is closed too, unless a live
  node started before the call was made (it may be running it),
* hands ``queued`` outbound calls that are in no dialling job (stored before the queue
  existed) to the dialling queue (:mod:`relay.calls.dial_queue`), which dials the rest.

Then, every third of ``RELAY_NODE_TIMEOUT_SECONDS``, it beats its heartbeat and closes the
calls of nodes that died since. Every close goes through the state machine, so each one is
stored, logged and delivered as a ``call.failed`` webhook. A node whose heartbeat stopped
is then taken over (:data:`TakeOver`: the webhook deliveries, post-call jobs and texts it
had claimed are due again at once, for any node; its recordings, whose audio died with it,
are failed) and its row removed, so this happens once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import bindparam, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.calls.event_log import log_event
from relay.calls.lifecycle import IllegalTransition, transition
from relay.events import release_leases
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, CallLease, DialJob, RelayNode, utcnow

log = get_logger("relay.calls.recovery")

RUNNING = ("connecting", "ringing", "in_progress")
RESTART_REASON = "relay_restart"
# A queued outbound call older than this that nobody holds was lost between its creation
# and its dialling (its node died in between): dial it.
STALE_QUEUED_SECONDS = 5.0
READY_RETRY_SECONDS = 5.0
# A call waiting this long for its media socket (the join token lives 60 s) never gets one.
UNJOINED_SECONDS = 90.0

Redial = Callable[[list[str]], Awaitable[None]]
# What a survivor does for each kind of work a dead node had claimed: release it (idempotent,
# since two survivors may both do it); returns how many were released.
TakeOver = Callable[[str], Awaitable[int]]


def _lock_statement(*where: Any) -> Any:
    return (
        update(Call)
        .where(Call.id == bindparam("b_id"), *where)
        .values(status=Call.status)
        .returning(Call)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


# Built once, values as parameters: no expression building or cache-key hashing per call.
_LOCK = _lock_statement()
_LOCK_IN_PROJECT = _lock_statement(Call.project_id == bindparam("b_project"))


async def lock_call(
    session: AsyncSession, call_id: str, project_id: str | None = None
) -> Call | None:
    """Load a call and hold it until the transaction ends, so two writers cannot both move it.

    One statement, a no-op ``UPDATE ... RETURNING``: on PostgreSQL it takes the row lock, on
    SQLite the database's write lock, so the state read is the newest and a concurrent
    writer waits for this transaction."""
    if project_id is None:
        result = await session.execute(_LOCK, {"b_id": call_id})
    else:
        result = await session.execute(_LOCK_IN_PROJECT, {"b_id": call_id, "b_project": project_id})
    call: Call | None = result.scalar_one_or_none()
    return call


async def hold_call(session: AsyncSession, call_id: str, node_id: str) -> bool:
    """Record that ``node_id`` runs ``call_id``; False if some node already does. Call it
    with the call locked (:func:`lock_call`), in the transaction that makes it live."""
    if await session.get(CallLease, call_id) is not None:
        return False
    await hold_new_call(session, call_id, node_id)
    return True


async def hold_new_call(session: AsyncSession, call_id: str, node_id: str) -> None:
    """:func:`hold_call` for a call made in this transaction, which nobody can hold yet (no
    read, which would flush what the transaction made so far)."""
    session.add(CallLease(call_id=call_id, node_id=node_id, created_at=utcnow()))


_RELEASE = (
    delete(CallLease)
    .where(CallLease.call_id == bindparam("b_id"))
    .execution_options(synchronize_session=False)
)


async def release_call(session: AsyncSession, call_id: str) -> None:
    await session.execute(_RELEASE, {"b_id": call_id})


async def heartbeat(db: Database, node_id: str, *, starting: bool = False) -> None:
    async with db.session() as session:
        node = await session.get(RelayNode, node_id)
        now = utcnow()
        if node is None:
            session.add(RelayNode(id=node_id, started_at=now, heartbeat_at=now))
        else:
            node.heartbeat_at = now
            if starting:
                node.started_at = now


async def _other_live_nodes(
    session: AsyncSession, node_id: str, since: datetime
) -> dict[str, datetime]:
    """The other nodes alive, with when each started."""
    rows = await session.execute(
        select(RelayNode.id, RelayNode.started_at).where(
            RelayNode.heartbeat_at >= since, RelayNode.id != node_id
        )
    )
    return {node: started for node, started in rows}


async def orphaned_calls(
    db: Database, node_id: str, node_timeout: float, *, starting: bool
) -> list[str]:
    """Live calls whose holder is dead. ``starting``: this node's previous life counts as
    dead, and so do unheld calls older than every other live node (none of them can have
    opened it: it is a dead one's; with workers, several nodes restart at once)."""
    async with db.session() as session:
        since = utcnow() - timedelta(seconds=node_timeout)
        alive = await _other_live_nodes(session, node_id, since)
        oldest = min(alive.values(), default=None)
        rows = await session.execute(
            select(Call.id, CallLease.node_id, Call.created_at)
            .outerjoin(CallLease, CallLease.call_id == Call.id)
            .where(Call.status.in_(RUNNING))
        )
        out = []
        for call_id, holder, created in rows:
            if holder is None:
                dead = starting and (oldest is None or created < oldest)
            elif holder == node_id:
                dead = starting
            else:
                dead = holder not in alive
            if dead:
                out.append(call_id)
    return out


async def close_orphan(db: Database, call_id: str) -> bool:
    async with db.session() as session:
        call = await lock_call(session, call_id)
        if call is None or call.status not in RUNNING:
            return False
        try:
            await transition(session, call, "failed", reason=RESTART_REASON)
        except IllegalTransition:
            return False
        await log_event(
            session,
            call_id,
            "lifecycle",
            "The relay process running this call stopped; the call was closed.",
            level="error",
        )
        await release_call(session, call_id)
    return True


async def unheld_queued_outbound(db: Database, *, older_than: float = 0.0) -> list[str]:
    before = utcnow() - timedelta(seconds=older_than)
    async with db.session() as session:
        rows = await session.execute(
            select(Call.id)
            .outerjoin(CallLease, CallLease.call_id == Call.id)
            .where(
                Call.status == "queued",
                Call.direction == "outbound",
                Call.number_id.is_not(None),
                CallLease.call_id.is_(None),
                Call.created_at <= before,
                ~exists().where(DialJob.call_id == Call.id),
            )
            .order_by(Call.id)
        )
        return list(rows.scalars())


async def expire_unconnected(db: Database, call_id: str) -> bool:
    """Fail a call still waiting for its media socket (``network_timeout``)."""
    async with db.session() as session:
        call = await lock_call(session, call_id)
        if call is None or call.status not in ("queued", "connecting"):
            return False
        await transition(session, call, "failed", reason="network_timeout")
    return True


async def expire_unjoined(db: Database, older_than: float) -> list[str]:
    """Fail (``network_timeout``) calls that nobody holds and that still wait for a media
    socket long after their join token expired: nobody can connect them any more."""
    before = utcnow() - timedelta(seconds=older_than)
    async with db.session() as session:
        rows = await session.execute(
            select(Call.id)
            .outerjoin(CallLease, CallLease.call_id == Call.id)
            .where(
                Call.status == "connecting",
                CallLease.call_id.is_(None),
                Call.created_at <= before,
            )
        )
        stale = list(rows.scalars())
    return [call_id for call_id in stale if await expire_unconnected(db, call_id)]


async def _forget_ended_leases(db: Database) -> None:
    async with db.session() as session:
        live = select(Call.id).where(or_(Call.status.in_(RUNNING), Call.status == "queued"))
        await session.execute(delete(CallLease).where(CallLease.call_id.not_in(live)))


async def _no_dial(_call_ids: list[str]) -> None:
    return None


class Recovery:
    """Startup recovery and the heartbeat loop of one node."""

    def __init__(
        self,
        db: Database,
        node_id: str,
        timeout: float,
        redial: Redial,
        take_over: tuple[TakeOver, ...] = (),
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.timeout = timeout
        self.redial = redial
        self.take_over = take_over
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._recovered = False
        self._deliver: Callable[[], Awaitable[None]] | None = None

    async def start(self, deliver: Callable[[], Awaitable[None]]) -> None:
        """Start webhook delivery (``deliver``) and recover what a dead node left, then beat.
        A database that is not migrated yet (or not reachable) does not stop the relay: this
        waits for it in the background, asking every ``READY_RETRY_SECONDS``."""
        self._deliver = deliver
        if await self._ready():
            await self._begin()
        else:
            log.warning("recovery_waits_for_database", node_id=self.node_id)
            self._task = asyncio.create_task(self._wait_then_begin(), name="node-waits")

    async def _ready(self) -> bool:
        try:
            return await self.db.migrations_current()
        except Exception:
            return False

    async def _begin(self) -> None:
        assert self._deliver is not None
        await self._deliver()
        try:
            await self.recover()
        except Exception as exc:  # retried with the next beat
            log.warning("recovery_failed", node_id=self.node_id, error=repr(exc))
        self._task = asyncio.create_task(self._beat(), name="node-heartbeat")

    async def _wait_then_begin(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), READY_RETRY_SECONDS)
            if self._stop.is_set():
                return
            if await self._ready():
                await self._begin()
                return

    async def recover(self) -> list[str]:
        """Startup recovery; returns the ids of the calls closed."""
        await heartbeat(self.db, self.node_id, starting=True)
        released = await release_leases(self.db, self.node_id)
        closed = await self.sweep(starting=True)
        await self.redial(await unheld_queued_outbound(self.db))
        self._recovered = True
        log.info(
            "recovery_done", node_id=self.node_id, calls_closed=len(closed), deliveries=released
        )
        return closed

    async def sweep(self, *, starting: bool = False) -> list[str]:
        closed = []
        for call_id in await orphaned_calls(self.db, self.node_id, self.timeout, starting=starting):
            if await close_orphan(self.db, call_id):
                log.warning("orphaned_call_closed", call_id=call_id, reason=RESTART_REASON)
                closed.append(call_id)
        return closed

    def stop_dialling(self) -> None:
        """Shutting down: hand no more queued calls to this node's dialler."""
        self.redial = _no_dial

    async def bury(self) -> list[str]:
        """Take over what dead nodes had claimed (their calls were closed by the sweep),
        then forget them. Returns their ids."""
        since = utcnow() - timedelta(seconds=self.timeout)
        async with self.db.session() as session:
            dead = list(
                (
                    await session.execute(
                        select(RelayNode.id).where(
                            RelayNode.heartbeat_at < since, RelayNode.id != self.node_id
                        )
                    )
                ).scalars()
            )
        for node in dead:
            released = [await release(node) for release in self.take_over]
            async with self.db.session() as session:
                await session.execute(
                    delete(RelayNode).where(RelayNode.id == node, RelayNode.heartbeat_at < since)
                )
            log.warning("dead_node_taken_over", node_id=node, by=self.node_id, released=released)
        return dead

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.timeout / 3)
            if self._stop.is_set():
                return
            try:
                if not self._recovered:
                    await self.recover()
                    continue
                await heartbeat(self.db, self.node_id)
                await self.sweep()
                await self.bury()
                await self.redial(
                    await unheld_queued_outbound(self.db, older_than=STALE_QUEUED_SECONDS)
                )
                await expire_unjoined(self.db, UNJOINED_SECONDS)
                await _forget_ended_leases(self.db)
            except Exception as exc:  # the loop must outlive a database hiccup
                log.warning("heartbeat_failed", error=repr(exc))

    async def stop(self) -> None:
        self._stop.set()  # not cancel(): a sweep may be inside a transaction
        while self._task is not None and not self._task.done():
            await self._task  # the waiting task may hand over to the heartbeat
        if self._recovered:
            with contextlib.suppress(Exception):
                async with self.db.session() as session:
                    await session.execute(delete(RelayNode).where(RelayNode.id == self.node_id))


RECOVERY: web.AppKey[Recovery] = web.AppKey("relay_recovery", Recovery)


__all__ = [
    "RECOVERY",
    "Recovery",
    "expire_unconnected",
    "hold_call",
    "hold_new_call",
    "lock_call",
    "orphaned_calls",
    "release_call",
]
