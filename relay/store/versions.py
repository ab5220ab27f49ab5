"""Table versions, and the cache of reads they keep current (SQLite only).

Table versions (:meth:`Database.table_version`): a counter per table, moved by every
statement that writes the table and again when its transaction commits, so a cache of rows of
a table this process alone writes can tell whether what it holds is still current.
:class:`SnapshotCache` is that cache for what a read in a transaction found.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Select, Table, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession

ANY_TABLE = "*"  # a write whose table is not known: every table's version moves
_READS = ("SELECT", "PRAGMA")
_TOUCHED = "relay_tables_written"  # Connection.info: tables the open transaction wrote
_AT_BEGIN = "relay_versions_at_begin"  # Connection.info: the table versions when it began

K = TypeVar("K")
T = TypeVar("T")


class TableVersions:
    """The table versions of one SQLite engine, moved by the events of its connections
    (:meth:`listen`) and by the statements run straight on its driver (:meth:`note_write`)."""

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}

    def listen(self, engine: Engine) -> None:
        event.listen(engine, "begin", self._began)
        event.listen(engine, "after_cursor_execute", self._wrote)
        event.listen(engine, "commit", self._committed)
        event.listen(engine, "rollback", self._rolled_back)

    def of(self, table: str) -> int:
        """``table``'s version: it moves with every write to the table."""
        return self._versions.get(table, 0) + self._versions.get(ANY_TABLE, 0)

    def snapshot(self, conn: Connection, tables: tuple[str, ...]) -> tuple[int, ...] | None:
        """See :meth:`Database.snapshot_version`."""
        began = conn.info.get(_AT_BEGIN)
        if began is None:
            return None
        now = tuple(self.of(table) for table in tables)
        then = tuple(began.get(t, 0) + began.get(ANY_TABLE, 0) for t in tables)
        return now if now == then else None

    def note_write(self, info: dict[Any, Any], tables: set[str]) -> None:
        """A statement on the connection whose ``info`` this is wrote ``tables``."""
        self._bump(tables)
        info.setdefault(_TOUCHED, set()).update(tables)

    def _began(self, conn: Connection) -> None:
        conn.info[_AT_BEGIN] = dict(self._versions)

    def _bump(self, tables: set[str]) -> None:
        for table in tables:
            self._versions[table] = self._versions.get(table, 0) + 1

    def _wrote(
        self, conn: Connection, _cursor: Any, statement: str, _params: Any, context: Any, _many: Any
    ) -> None:
        compiled = getattr(getattr(context, "compiled", None), "statement", None)
        if context is not None and (context.isinsert or context.isupdate or context.isdelete):
            table = getattr(compiled, "table", None)
            tables = {table.name} if isinstance(table, Table) else {ANY_TABLE}
        elif isinstance(compiled, Select) or statement.lstrip()[:6].upper() in _READS:
            return
        else:  # text, DDL: it may have written anything
            tables = {ANY_TABLE}
        self.note_write(conn.info, tables)

    def _committed(self, conn: Connection) -> None:
        conn.info.pop(_AT_BEGIN, None)
        self._bump(conn.info.pop(_TOUCHED, set()))

    def _rolled_back(self, conn: Connection) -> None:
        conn.info.pop(_AT_BEGIN, None)
        conn.info.pop(_TOUCHED, None)


class Versioned(Protocol):
    """What a cache needs of a database handle (:class:`relay.store.Database` is one)."""

    is_sqlite: bool
    versions: TableVersions


class SnapshotCache(Generic[K, T]):
    """What a read in a session's transaction found, kept per :class:`Database` by ``key``
    while none of ``tables`` has been written (:meth:`Database.snapshot_version`; SQLite
    only: elsewhere every ``get`` reads). Everyone asking while it stays current gets the
    same value: read it, never change it. Past ``max_items`` keys it starts afresh."""

    def __init__(self, tables: tuple[str, ...], max_items: int = 10_000) -> None:
        self.tables = tables
        self.max_items = max_items
        # a Database's table versions -> key -> (the tables' versions, the value)
        self._found: weakref.WeakKeyDictionary[
            TableVersions, dict[K, tuple[tuple[int, ...], T]]
        ] = weakref.WeakKeyDictionary()

    async def get(
        self, session: AsyncSession, db: Versioned | None, key: K, read: Callable[[], Awaitable[T]]
    ) -> T:
        """The value kept for ``key``, or ``await read()`` (in ``session``), kept if no
        table moved while it ran."""
        if db is None or not db.is_sqlite:
            return await read()
        conn = (await session.connection()).sync_connection
        versions = db.versions
        version = None if conn is None else versions.snapshot(conn, self.tables)
        if conn is None or version is None:
            return await read()
        found = self._found.setdefault(versions, {})
        hit = found.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = await read()
        if versions.snapshot(conn, self.tables) == version:
            if len(found) >= self.max_items:
                found.clear()
            found[key] = (version, value)
        return value
