"""Commands for a live call that another node holds: a row, announced by PostgreSQL NOTIFY.

A request that must reach a live call (end it through the API, hang up a web call) lands on
whichever node the load balancer picked; the call runs where its media socket or dial is, on
the node its lease names. That node's :class:`CommandBus` LISTENs on the deployment's channel
(one asyncpg connection of its own). The sender stores a :class:`NodeCommand` addressed to
the holder and, in the same transaction, NOTIFYs the channel with the holder's id, which
PostgreSQL delivers at the commit. The row is the command and the notification only a
wake-up: the holder also takes its rows every :data:`POLL_SECONDS`, so a notification lost
with a dropped connection delays a command, never loses it.

On SQLite one process holds every call: nobody else to tell, no bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
from aiohttp import web
from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import CallLease, NodeCommand, utcnow

log = get_logger("relay.calls.commands")

END = "end"
# Carry out the call's ``voicemail`` setting on the verdict stored (relay.calls.voicemail).
VOICEMAIL = "voicemail"
KINDS = (END, VOICEMAIL)
# The fallback: how often a node takes its commands with no notification.
POLL_SECONDS = 2.0
# A command its node never took (the node died; recovery closes its calls) is dropped.
FORGET_SECONDS = 3600.0

Run = Callable[[str, str], Awaitable[None]]  # (kind, call_id)


async def holder(session: AsyncSession, call_id: str) -> str | None:
    """The node that runs ``call_id``, if any does."""
    node: str | None = await session.scalar(
        select(CallLease.node_id).where(CallLease.call_id == call_id)
    )
    return node


def channel(schema: str) -> str:
    """The deployment's channel: NOTIFY reaches the whole database, and deployments that
    share one keep apart by schema."""
    return "relay_commands_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


async def send(session: AsyncSession, node_id: str, call_id: str, kind: str) -> None:
    """Ask ``node_id`` to do ``kind`` to ``call_id``, once the transaction commits."""
    assert kind in KINDS
    session.add(NodeCommand(node_id=node_id, call_id=call_id, kind=kind, created_at=utcnow()))
    schema = (await session.execute(text("SELECT current_schema()"))).scalar_one()
    await session.execute(
        text("SELECT pg_notify(:channel, :node)"), {"channel": channel(schema), "node": node_id}
    )


async def take(db: Database, node_id: str) -> list[tuple[str, str]]:
    """Remove and return ``node_id``'s commands, oldest first: (kind, call id)."""
    async with db.session() as session:
        rows = await session.execute(
            delete(NodeCommand)
            .where(NodeCommand.node_id == node_id)
            .returning(NodeCommand.id, NodeCommand.kind, NodeCommand.call_id)
        )
        return [(kind, call_id) for _, kind, call_id in sorted(rows.all())]


async def forget_old(db: Database) -> None:
    before = utcnow() - timedelta(seconds=FORGET_SECONDS)
    async with db.session() as session:
        await session.execute(delete(NodeCommand).where(NodeCommand.created_at < before))


class CommandBus:
    """One node's end of the commands: listens, takes its rows, runs each with ``run``."""

    def __init__(self, db: Database, node_id: str, run: Run, poll: float = POLL_SECONDS) -> None:
        self.db = db
        self.node_id = node_id
        self.run = run
        self.poll = poll
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="node-commands")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._hang_up()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            if self._conn is None or self._conn.is_closed():
                await self._listen()
            self._wake.clear()  # before the take: a notification during it runs another
            try:
                commands = await take(self.db, self.node_id)
            except Exception as exc:  # not migrated yet, or a hiccup: the next round retries
                log.warning("node_commands_failed", error=repr(exc))
                commands = []
            for kind, call_id in commands:
                task = asyncio.create_task(self._one(kind, call_id), name=f"command:{call_id}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _one(self, kind: str, call_id: str) -> None:
        log.info("node_command", kind=kind, call_id=call_id, node_id=self.node_id)
        try:
            await self.run(kind, call_id)
        except Exception:  # one command's failure is not the bus's
            log.exception("node_command_failed", kind=kind, call_id=call_id)

    async def _listen(self) -> None:
        await self._hang_up()
        try:
            url = make_url(self.db.url).set(drivername="postgresql")
            conn = await asyncpg.connect(url.render_as_string(hide_password=False))
            async with self.db.engine.connect() as sa_conn:
                schema = (await sa_conn.execute(text("SELECT current_schema()"))).scalar_one()
            await conn.add_listener(channel(schema), self._notified)
        except Exception as exc:  # the poll still runs; the next round tries again
            log.warning("node_listen_failed", error=repr(exc))
            return
        self._conn = conn

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.node_id:
            self._wake.set()

    async def _hang_up(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


COMMANDS: web.AppKey[CommandBus] = web.AppKey("relay_commands", CommandBus)


__all__ = ["COMMANDS", "END", "CommandBus", "channel", "holder", "send", "take"]
