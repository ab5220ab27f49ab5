"""The database handle: one async engine per process, SQLite (WAL) or PostgreSQL.

SQLite lets one transaction write at a time. A writer that finds the lock taken sleeps in
SQLite's busy handler (1, 2, 5, 10 ... 100 ms) and retries: unfair, tens of milliseconds per
wait, and after ``busy_timeout`` it fails with "database is locked", which a few dozen
concurrent writers reach. :meth:`Database.writing` queues the process's writers on one
``asyncio.Lock`` instead, handed over in order the moment it is free. Readers never wait
(WAL). On PostgreSQL (row locks, many writers) nothing is queued.

The handle's mechanisms live next to it, one module each: :mod:`relay.store.sqlite` (SQLite
run on the event loop's thread), :mod:`relay.store.group_commit` (:meth:`Database.write`),
:mod:`relay.store.prepared` (prepared statements, rows inserted at commit),
:mod:`relay.store.versions` (table versions) and :mod:`relay.store.migrate` (Alembic).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from relay.store import prepared
from relay.store.group_commit import GroupCommit, Write
from relay.store.migrate import at_head, upgrade_to_head
from relay.store.prepared import run_in_loop
from relay.store.sqlite import in_loop_connector, sqlite_pragmas
from relay.store.versions import TableVersions

T = TypeVar("T")


def _private_file(path: Path) -> None:
    """Make the SQLite file owner-only before SQLite does (its WAL and shared-memory files
    take the database file's permissions); a file that exists is left as it is."""
    if path.exists():
        return
    missing = []
    directory = path.parent
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        made.chmod(0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


class Database:
    """Owns the engine and hands out sessions. ``url`` is any SQLAlchemy async URL;
    ``schema`` (PostgreSQL only) is the search_path every connection starts with."""

    def __init__(
        self, url: str, *, schema: str = "", connect_args: dict[str, Any] | None = None
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        args = dict(connect_args or {})
        if schema:
            if parsed.get_backend_name() != "postgresql":
                raise ValueError("a database schema can only be set for PostgreSQL")
            args["server_settings"] = {**args.get("server_settings", {}), "search_path": schema}
        kwargs: dict[str, Any] = {"connect_args": args}
        if self.is_sqlite:
            database = parsed.database or ""
            if database and database != ":memory:":
                _private_file(Path(database))
            if parsed.get_driver_name() == "aiosqlite" and not parsed.query:
                kwargs["async_creator"] = in_loop_connector(database or ":memory:")
        else:
            # No pre-ping: it costs three round trips per checkout. A connection PostgreSQL
            # closed (restart, failover) fails the one statement that finds it, the pool then
            # drops every connection opened before it, and the API answers that request 503
            # database_unavailable. 30 kept connections: fewer made the pool open and close
            # overflow connections all the time under load.
            kwargs.update(pool_size=30, max_overflow=20, pool_pre_ping=False)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.versions = TableVersions()  # moved on SQLite only
        if self.is_sqlite:
            run_in_loop(self.engine.sync_engine, self.versions)
            event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)
            self.versions.listen(self.engine.sync_engine)
        # This database's own Session class, for its sessions and the group commit's: hooks
        # put on it (relay.events.attach) see this database's transactions only.
        self.session_class: type[Session] = type("Session", (Session,), {})
        prepared.listen(self.session_class)
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=self.session_class
        )
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._group: GroupCommit | None = None
        self._apps = 0

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """:meth:`session` for a transaction that writes: on SQLite, after the process's
        writers before it (one at a time). Never nest it in another ``writing``."""
        if not self.is_sqlite:
            async with self.session() as session:
                yield session
            return
        async with self._writer_lock(), self.session() as session:
            yield session

    async def write(self, work: Write[T]) -> T:
        """Run ``work(session)`` in a write transaction and return what it returns, once that
        transaction has committed. It may share the transaction with other writes queued at
        the same time (group commit), so ``work`` must only use ``session`` (no
        other awaits), may run twice (once in a group that failed, then alone), and must not
        commit or roll back itself. Its error, raised here, rolled back what it wrote.

        Objects it ``session.add``s, and rows it hands to
        :func:`relay.store.insert_at_commit`, are written when the transaction commits (one
        flush for the group), not before its next statement: ``work`` does not read them
        back. A read may come this way too, to share a group's transaction instead of
        opening its own."""
        loop = asyncio.get_running_loop()
        if self._group is None or self._group.loop is not loop:
            self._group = GroupCommit(self.engine, self.sessions, self._writer_lock, loop)
        return await self._group.submit(work)

    def table_version(self, table: str) -> int | None:
        """A number that changes whenever ``table`` may have changed (a write to it ran or
        committed, in this process); None on PostgreSQL, where other nodes write too. Read
        it before a query and keep what the query found only while it stays the same."""
        if not self.is_sqlite:
            return None
        return self.versions.of(table)

    def snapshot_version(self, conn: Connection, tables: tuple[str, ...]) -> tuple[int, ...] | None:
        """The versions of ``tables`` that what ``conn``'s open transaction reads reflects:
        those of when it began, if none has moved since (a SQLite read transaction sees the
        database as of its first statement, which may be older than the versions now). None
        if one has moved, or on PostgreSQL: a cache must not keep what such a read found."""
        return self.versions.snapshot(conn, tables)

    def _writer_lock(self) -> asyncio.Lock:
        # One lock per event loop: a CLI command may run several loops on one handle.
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock[0] is not loop:
            self._write_lock = (loop, asyncio.Lock())
        return self._write_lock[1]

    async def migrate(self) -> None:
        """Bring the schema to the newest revision."""
        await upgrade_to_head(self.engine, self.url)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrations_current(self) -> bool:
        return await at_head(self.engine, self.url)

    def attach(self) -> None:
        """An app starts using this handle; it will :meth:`detach` when it stops."""
        self._apps += 1

    async def detach(self) -> None:
        """An app stopped. The last one closes the engine: disposing it while another app
        (tests run several on one database) still has a connection out would orphan that
        connection, never to be closed."""
        self._apps -= 1
        if self._apps <= 0:
            await self.close()

    async def close(self) -> None:
        group, self._group = self._group, None
        if group is not None and group.loop is asyncio.get_running_loop():
            await group.close()
        await self.engine.dispose()
