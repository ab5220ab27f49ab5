"""Prepared statements, and rows inserted when their transaction commits.

Rows inserted at commit (:func:`insert_at_commit`): an append-only row handed over as a dict
is written when its transaction commits, with one INSERT per table for every such row of the
transaction (a whole group's), instead of an ORM object each: the unit of work's bookkeeping
for an object (its state, its identity, sorting it into the flush) cost more than the INSERT.

Prepared statements (:class:`Prepared`, SQLite only): a hot statement built once is compiled
once to its SQL and run straight on the driver's connection of the session's transaction.
Through the session, nearly all of the CPU a one-row UPDATE costs is SQLAlchemy's (the
execution context, parameters, the result), not ``sqlite3``'s. Rows inserted at commit take
the same path. PostgreSQL runs them through the session.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Executable, Insert, MetaData, Table, bindparam, event, insert
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import await_only

from relay.store.sqlite import InLoopSqlite
from relay.store.versions import ANY_TABLE, TableVersions

_ROWS = "relay_rows_at_commit"  # Session.info: table -> rows to insert when it commits
_RAW = "relay_raw"  # Connection.info: its _Raw; Session.info: its transaction's (or None)


def insert_at_commit(session: AsyncSession | Session, table: Table, row: dict[str, Any]) -> None:
    """Insert ``row`` into ``table`` when the session's transaction commits, before the ORM
    flushes its objects, with the other rows of the transaction for that table (one
    executemany; tables in foreign-key order). The transaction does not see the row before
    that, and a rollback drops it. Every row of a table must name the same columns."""
    rows: dict[Table, list[dict[str, Any]]] = session.info.setdefault(_ROWS, {})
    rows.setdefault(table, []).append(row)


_inserts: dict[Table, Insert] = {}  # built once per table: the compiled form is cached


@functools.cache
def _foreign_key_order(metadata: MetaData) -> dict[Table, int]:
    return {table: i for i, table in enumerate(metadata.sorted_tables)}


def _insert_rows(session: Session) -> None:
    rows: dict[Table, list[dict[str, Any]]] | None = session.info.pop(_ROWS, None)
    if not rows:
        return
    order = _foreign_key_order(next(iter(rows)).metadata)
    for table in sorted(rows, key=lambda t: order.get(t, -1)):
        insert_now(session, table, rows[table])


def insert_now(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` now, in the session's transaction, in one executemany
    (on SQLite straight on the driver, see :class:`Prepared`). Every row names the same
    columns. For the session's own event hooks (a flush's, a commit's)."""
    if not rows:
        return
    raw = _raw_connection(session.connection())
    if raw is not None:
        plan = _insert_plan(table, tuple(rows[0]), raw.dialect)
        if plan is not None:
            await_only(raw.executemany(plan, rows))
            return
    stmt = _inserts.get(table)
    if stmt is None:
        stmt = _inserts[table] = insert(table)
    session.execute(stmt, rows)


@functools.cache
def _insert_plan(table: Table, columns: tuple[str, ...], dialect: Dialect) -> _Plan | None:
    """The raw INSERT of rows naming ``columns``; None if the table fills others itself
    (Python-side defaults: only SQLAlchemy's execution runs them)."""
    stmt = insert(table).values({name: bindparam(name) for name in columns})
    compiled = _compiled(stmt, dialect)
    if compiled.insert_prefetch or compiled.postfetch:
        return None
    return _Plan.of(stmt, compiled)


def _compiled(stmt: Executable, dialect: Dialect) -> SQLCompiler:
    compiled = cast(ClauseElement, stmt).compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    return compiled


def _drop_rows(session: Session) -> None:
    session.info.pop(_ROWS, None)


def _forget_raw(session: Session, _transaction: Any) -> None:
    session.info.pop(_RAW, None)


def listen(session_class: type[Session]) -> None:
    """Write inserts at commit, and let go of the driver connection, in the sessions of one
    database (``Database`` calls this for its own session class)."""
    event.listen(session_class, "before_commit", _insert_rows)
    event.listen(session_class, "after_rollback", _drop_rows)
    event.listen(session_class, "after_transaction_end", _forget_raw)


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The values of ``names`` (a dict's), in that order, as a tuple: one C call."""
    if not names:
        return lambda _values: ()
    if len(names) == 1:
        one = operator.itemgetter(names[0])
        return lambda values: (one(values),)
    return operator.itemgetter(*names)


class _Plan:
    """A statement compiled for SQLite: its SQL, how to turn named parameters into the
    positional ones (the statement's own constants filled in, each value through its type's
    bind processor), and how to turn a row's values back (result processors)."""

    __slots__ = ("sql", "table", "_get", "_constants", "_processed", "_results")

    def __init__(
        self,
        sql: str,
        table: str | None,
        names: list[str],
        constants: dict[str, Any],
        processed: list[tuple[int, Callable[[Any], Any]]],
        results: list[Callable[[Any], Any] | None],
    ) -> None:
        self.sql = sql
        self.table = table  # the table it writes, if it writes
        # parameter (or constant) names in position order, taken in one C call
        self._get = _getter(names)
        self._constants = constants  # already through their processors
        self._processed = processed  # (position, processor) of the parameters that have one
        self._results = results if any(results) else None

    @classmethod
    def of(cls, stmt: Executable, compiled: SQLCompiler) -> _Plan:
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a prepared statement cannot have expanding parameters")
        processors: dict[str, Any] = dict(compiled._bind_processors)
        names: list[str] = []
        constants: dict[str, Any] = {}
        processed: list[tuple[int, Callable[[Any], Any]]] = []
        for position, name in enumerate(compiled.positiontup or ()):
            bind = compiled.binds[name]
            processor = processors.get(name)
            names.append(name)
            if not bind.required and bind.callable is None:
                # a value written into the statement, e.g. .values(work="done")
                value = bind.effective_value
                constants[name] = processor(value) if processor else value
            elif processor is not None:
                processed.append((position, processor))
        dialect = compiled.dialect
        results: list[Callable[[Any], Any] | None] = [
            entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns
        ]
        table = getattr(stmt, "table", None)
        writes = compiled.isinsert or compiled.isupdate or compiled.isdelete
        return cls(
            compiled.string,
            (table.name if isinstance(table, Table) else ANY_TABLE) if writes else None,
            names,
            constants,
            processed,
            results,
        )

    def parameters(self, values: dict[str, Any]) -> Sequence[Any]:
        if self._constants:
            values = values | self._constants
        found = self._get(values)
        if not self._processed:
            return found
        out = list(found)
        for position, processor in self._processed:
            out[position] = processor(out[position])
        return out

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._results is None:
            return raw
        return tuple(
            processor(value) if processor else value
            for value, processor in zip(raw, self._results, strict=True)
        )


class _Raw:
    """The driver's connection under a session's SQLite transaction, and the table versions
    (its Database's) its writes move."""

    __slots__ = ("info", "driver", "versions", "dialect")

    def __init__(self, conn: Connection, driver: InLoopSqlite, versions: TableVersions) -> None:
        self.info = conn.info  # the DBAPI connection's, kept across checkouts
        self.driver = driver
        self.versions = versions
        self.dialect = conn.dialect

    def _wrote(self, plan: _Plan) -> None:
        if plan.table is not None:
            self.versions.note_write(self.info, {plan.table})

    async def execute(self, plan: _Plan, values: dict[str, Any]) -> tuple[list[Any], int]:
        sqlite = self.driver._connection
        assert sqlite is not None

        def run() -> tuple[list[Any], int]:
            cursor = sqlite.execute(plan.sql, plan.parameters(values))
            try:
                rows = cursor.fetchall()
                return [plan.row(r) for r in rows], cursor.rowcount
            finally:
                cursor.close()

        try:
            found = await self.driver._execute(run)
        except sqlite3.Error as exc:  # as SQLAlchemy raises it (IntegrityError, ...)
            raise DBAPIError.instance(plan.sql, values, exc, sqlite3.Error) from exc
        self._wrote(plan)
        return found  # type: ignore[no-any-return]

    async def executemany(self, plan: _Plan, rows: list[dict[str, Any]]) -> None:
        sqlite = self.driver._connection
        assert sqlite is not None
        params = [plan.parameters(row) for row in rows]
        try:
            await self.driver._execute(sqlite.executemany, plan.sql, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(plan.sql, params, exc, sqlite3.Error) from exc
        self._wrote(plan)


# Engine -> the table versions of the Database that owns it, which a raw write moves.
_owners: weakref.WeakKeyDictionary[Engine, TableVersions] = weakref.WeakKeyDictionary()


def run_in_loop(engine: Engine, versions: TableVersions) -> None:
    """Run prepared statements and inserts at commit straight on ``engine``'s in-loop
    driver connections, moving ``versions``."""
    _owners[engine] = versions


def _raw_connection(conn: Connection) -> _Raw | None:
    """``conn``'s driver connection, if it is one this process runs in the loop (SQLite)."""
    found: _Raw | None = conn.info.get(_RAW)
    if found is not None:
        return found
    versions = _owners.get(conn.engine)
    driver = conn.connection.driver_connection
    if versions is None or not isinstance(driver, InLoopSqlite):
        return None
    found = conn.info[_RAW] = _Raw(conn, driver, versions)
    return found


class Prepared:
    """A statement built once, run as one on every backend: on SQLite compiled once and run
    on the driver's connection of the session's transaction (see the module's docstring),
    elsewhere through the session. Its values are parameters (``bindparam``) or constants
    of the statement itself. Reads the session's transaction, never its unflushed objects
    (no autoflush): use it where the ORM's objects are not in play."""

    __slots__ = ("stmt", "_plans")

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._plans: dict[type[Dialect], _Plan] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(type(dialect))
        if plan is None:
            plan = self._plans[type(dialect)] = _Plan.of(self.stmt, _compiled(self.stmt, dialect))
        return plan

    async def _raw(self, session: AsyncSession) -> _Raw | None:
        info = session.info  # kept for the transaction: _forget_raw drops it at its end
        if _RAW in info:
            raw: _Raw | None = info[_RAW]
            return raw
        raw = _raw_connection((await session.connection()).sync_connection)  # type: ignore[arg-type]
        info[_RAW] = raw
        return raw

    async def rows(self, session: AsyncSession, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows it returns (SELECT, or RETURNING), as tuples."""
        raw = await self._raw(session)
        if raw is None:
            return [tuple(row) for row in await session.execute(self.stmt, values)]
        return (await raw.execute(self._plan(raw.dialect), values))[0]

    async def rowcount(self, session: AsyncSession, values: dict[str, Any]) -> int:
        """How many rows it changed (UPDATE, DELETE)."""
        raw = await self._raw(session)
        if raw is None:
            result = await session.execute(self.stmt, values)
            return int(getattr(result, "rowcount", 0))
        return (await raw.execute(self._plan(raw.dialect), values))[1]
