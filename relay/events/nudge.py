"""Telling another node that a delivery waits behind one of its own (PostgreSQL only).

Deliveries of one endpoint and ordering key go out in order, so a node that makes one while
another node still holds an earlier delivery of that lane (sending it, or answered and not
yet recorded) leaves it in the outbox. Only the holder can free that lane: it records its
outcome and then may claim what waits behind it. Without a word from the maker, the holder
would find it at its next sweep, a second or more later. So the maker NOTIFYs the holder in
the transaction that makes the delivery (delivered at commit), and the holder claims at
once. This matters when the requests about one call reach different nodes, which a load
balancer does all the time; the sweep stays the fallback when a notification is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterable

import asyncpg
from sqlalchemy import make_url, text
from sqlalchemy.orm import Session

from relay.logs import get_logger
from relay.store.db import Database

log = get_logger("relay.events.nudge")

# How often a lost LISTEN connection is made again.
RECONNECT_SECONDS = 2.0


def channel(schema: str) -> str:
    """The deployment's channel: NOTIFY reaches the whole database; deployments that share
    one keep apart by schema."""
    return "relay_deliveries_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


class Nudges:
    """One node's end: listens for its own id and calls ``on_nudge``; :meth:`send` nudges
    others from inside a transaction."""

    def __init__(self, db: Database, node_id: str, on_nudge: Callable[[], None]) -> None:
        self.db = db
        self.node_id = node_id
        self.on_nudge = on_nudge
        self.channel: str | None = None  # known once listening
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._keep_listening(), name="delivery-nudges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def send(self, session: Session, nodes: Iterable[str]) -> None:
        """NOTIFY each of ``nodes`` when ``session``'s transaction commits."""
        if self.channel is None:
            return
        for node in sorted(set(nodes)):
            session.execute(
                text("SELECT pg_notify(:channel, :node)"), {"channel": self.channel, "node": node}
            )

    async def _listen(self) -> None:
        try:
            async with self.db.engine.connect() as sa_conn:
                schema = (await sa_conn.execute(text("SELECT current_schema()"))).scalar_one()
            url = make_url(self.db.url).set(drivername="postgresql")
            conn = await asyncpg.connect(url.render_as_string(hide_password=False))
            await conn.add_listener(channel(schema), self._notified)
        except Exception as exc:  # the sweep still finds the work; the next round retries
            log.warning("delivery_nudges_listen_failed", error=repr(exc))
            return
        self.channel = channel(schema)
        self._conn = conn

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._conn is None or self._conn.is_closed():
                await self._listen()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.node_id:
            self.on_nudge()


__all__ = ["Nudges", "channel"]
