"""Group commit: the writes queued at one time share one transaction.

Group commit (:meth:`Database.write`): a write handed over as a function of a session joins
the writes queued behind the one in progress, and all of them run in ONE transaction: one
session, one flush, one COMMIT for the group instead of one each. A group whose transaction
fails is rolled back and its writes are run again one transaction each, so one write's error
(a duplicate key, say) is that write's alone. On PostgreSQL too: one group at a time per
process, so its COMMIT (a WAL flush) and its session are shared as well; a group that hits a
deadlock with another node's writers is rolled back and rerun the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

GROUP_MAX = 64  # writes per group commit: bounds how long one transaction holds the lock

T = TypeVar("T")
Write = Callable[[AsyncSession], Awaitable[T]]


class GroupCommit:
    """The queue of :meth:`Database.write` calls of one event loop, and the task that commits
    them in groups, in the order they were queued."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        writer_lock: Callable[[], asyncio.Lock],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.engine = engine
        self.sessions = sessions  # the handle's, so its session hooks see the group's writes
        self.writer_lock = writer_lock  # the handle's lock of this loop's writers
        self.loop = loop
        self._queue: list[tuple[Write[Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._session: AsyncSession | None = None

    def submit(self, work: Write[T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.loop.create_future()
        self._queue.append((work, future))
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="db:group-commit")
        return future

    async def _run(self) -> None:
        group: list[tuple[Write[Any], asyncio.Future[Any]]] = []
        try:
            while self._queue:
                # One turn of the loop first: the writers the last commit woke, and whatever
                # else was ready in this turn, queue their next writes into this group
                # instead of each into a group of its own (fewer, fuller groups).
                await asyncio.sleep(0)
                group = [item for item in self._queue[:GROUP_MAX] if not item[1].done()]
                del self._queue[:GROUP_MAX]
                await self._commit(group)
        finally:  # cancelled (the loop is closing): nobody may wait for ever
            left, self._queue = group + self._queue, []
            for _, future in left:
                if not future.done():
                    future.set_exception(ConnectionError("the write was not committed"))

    async def _commit(self, group: list[tuple[Write[Any], asyncio.Future[Any]]]) -> None:
        if not group:
            return
        if len(group) > 1:
            try:
                results = await self._transaction([work for work, _ in group])
            except Exception:  # whose error it was is found out below, one by one
                pass
            else:
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
        for work, future in group:
            try:
                (result,) = await self._transaction([work])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def _transaction(self, works: list[Write[Any]]) -> list[Any]:
        """Run ``works`` in one transaction of the committer's own session, on its own
        connection. Both are kept from one transaction to the next: making a session, and
        checking a connection out of the pool and back in (with its reset), cost more than
        half of a one-statement transaction on SQLite. What a transaction
        loaded is let go when it ends, so the next one reads the store afresh. A connection
        PostgreSQL closed fails the transaction that finds it, which invalidates it: the
        next one connects again (SQLAlchemy's reconnect on next use)."""
        if self._session is None:
            self._conn = conn = await self.engine.connect()
            self._session = self.sessions(bind=conn)
        session = self._session
        try:
            async with self.writer_lock(), session.begin():
                with session.no_autoflush:
                    return [await work(session) for work in works]
        except asyncio.CancelledError:  # cancelled: the loop is going away; let the pool clean up
            self._session = self._conn = None
            raise
        finally:
            session.expunge_all()

    async def close(self) -> None:
        """Give the connection back (the handle is closing)."""
        session, conn = self._session, self._conn
        self._session = self._conn = None
        with contextlib.suppress(Exception):
            if session is not None:
                await session.close()
            if conn is not None:
                await conn.close()
