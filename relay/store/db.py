"""The database handle: one async engine per process, SQLite (WAL) or PostgreSQL.

SQLite lets one transaction write at a time. A writer that finds the lock taken sleeps in
SQLite's busy handler (1, 2, 5, 10 ... 100 ms) and retries: unfair, tens of milliseconds per
wait, and after ``busy_timeout`` it fails with "database is locked", which a few dozen
concurrent writers reach. :meth:`Database.writing` queues the process's writers on one
``asyncio.Lock`` instead, handed over in order the moment it is free. Readers never wait
(WAL). On PostgreSQL (row locks, many writers) nothing is queued.

SQLite calls run on the event loop's own thread (:class:`InLoopSqlite`), not on aiosqlite's
per-connection thread: a statement on an indexed row takes microseconds, while each hop to
that thread and back (a cursor, an execute, a fetch, a close: four per statement) cost tens
of microseconds of CPU and a wake-up of the loop. What can block the loop is a lock another
process holds (``busy_timeout``); this process's writers queue on ``writing`` instead, and
under WAL a commit does not fsync (``synchronous=NORMAL``).

Group commit (:meth:`Database.write`): a write handed over as a function of a session joins
the writes queued behind the one in progress, and all of them run in ONE transaction: one
session, one flush, one COMMIT for the group instead of one each. A group whose transaction
fails is rolled back and its writes are run again one transaction each, so one write's error
(a duplicate key, say) is that write's alone. On PostgreSQL too: one group at a time per
process, so its COMMIT (a WAL flush) and its session are shared as well; a group that hits a
deadlock with another node's writers is rolled back and rerun the same way.

Rows inserted at commit (:func:`insert_at_commit`): an append-only row handed over as a dict
is written when its transaction commits, with one INSERT per table for every such row of the
transaction (a whole group's), instead of an ORM object each: the unit of work's bookkeeping
for an object (its state, its identity, sorting it into the flush) cost more than the INSERT.

Prepared statements (:class:`Prepared`, SQLite only): a hot statement built once is compiled
once to its SQL and run straight on the driver's connection of the session's transaction.
Through the session, an UPDATE of one row cost about 180 us of CPU, nearly all of it in
SQLAlchemy (the execution context, parameters, the result); run on ``sqlite3`` it costs 5.
Rows inserted at commit take the same path. PostgreSQL runs them through the session.

Table versions (:meth:`Database.table_version`, SQLite only): a counter per table, moved by
every statement that writes the table and again when its transaction commits, so a cache of
rows of a table this process alone writes can tell whether what it holds is still current.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiosqlite
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Executable, Insert, MetaData, Select, Table, bindparam, event, insert, text
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import await_only

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


BUSY_TIMEOUT_S = 5.0  # how long a statement waits for a lock another process holds
_ANY_TABLE = "*"  # a write whose table is not known: every table's version moves
_READS = ("SELECT", "PRAGMA")
_TOUCHED = "relay_tables_written"  # Connection.info: tables the open transaction wrote
_AT_BEGIN = "relay_versions_at_begin"  # Connection.info: the table versions when it began
GROUP_MAX = 64  # writes per group commit: bounds how long one transaction holds the lock
_ROWS = "relay_rows_at_commit"  # Session.info: table -> rows to insert when it commits
_RAW = "relay_raw"  # Connection.info: its _Raw; Session.info: its transaction's (or None)

T = TypeVar("T")
K = TypeVar("K")
Write = Callable[[AsyncSession], Awaitable[T]]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # An in-loop connection must never sleep in SQLite's busy handler: that would stop the
    # event loop (every call's audio, SIGTERM) while another process holds the lock. It
    # gets SQLITE_BUSY at once and waits on the loop instead (InLoopSqlite._execute).
    in_loop = isinstance(getattr(dbapi_conn, "_connection", None), InLoopSqlite)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={0 if in_loop else int(BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


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


event.listen(Session, "before_commit", _insert_rows)
event.listen(Session, "after_rollback", _drop_rows)
event.listen(Session, "after_transaction_end", _forget_raw)


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
            (table.name if isinstance(table, Table) else _ANY_TABLE) if writes else None,
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
    """The driver's connection under a session's SQLite transaction, and the Database whose
    table versions its writes move."""

    __slots__ = ("info", "driver", "db", "dialect")

    def __init__(self, conn: Connection, driver: InLoopSqlite, db: Database) -> None:
        self.info = conn.info  # the DBAPI connection's, kept across checkouts
        self.driver = driver
        self.db = db
        self.dialect = conn.dialect

    def _wrote(self, plan: _Plan) -> None:
        if plan.table is not None:
            self.db._note_write(self.info, {plan.table})

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


# Engine -> the Database that owns it: a raw write moves that Database's table versions.
_owners: weakref.WeakKeyDictionary[Engine, Database] = weakref.WeakKeyDictionary()


def _raw_connection(conn: Connection) -> _Raw | None:
    """``conn``'s driver connection, if it is one this process runs in the loop (SQLite)."""
    found: _Raw | None = conn.info.get(_RAW)
    if found is not None:
        return found
    db = _owners.get(conn.engine)
    driver = conn.connection.driver_connection
    if db is None or not isinstance(driver, InLoopSqlite):
        return None
    found = conn.info[_RAW] = _Raw(conn, driver, db)
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


class InLoopSqlite(aiosqlite.Connection):
    """An aiosqlite connection whose calls run at once, on the calling (event loop) thread.
    Its worker thread still opens and closes the connection (aiosqlite and SQLAlchemy's
    adapter send those through it), hence ``check_same_thread=False``."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` now; while another process holds the lock (SQLITE_BUSY, returned at once
        since busy_timeout is 0 here), retry with a growing pause, up to ``BUSY_TIMEOUT_S``,
        letting the loop run in between. A statement that got SQLITE_BUSY did nothing."""
        delay, deadline = 0.001, 0.0
        while True:
            if not self._running or not self._connection:
                raise ValueError("Connection closed")
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = asyncio.get_running_loop().time()
                deadline = deadline or now + BUSY_TIMEOUT_S
                if now >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)


def _in_loop_connector(database: str) -> Callable[[], Any]:
    async def connect() -> aiosqlite.Connection:
        conn = InLoopSqlite(
            lambda: sqlite3.connect(database, check_same_thread=False), iter_chunk_size=64
        )
        # As SQLAlchemy sets it: a leaked one never blocks exit. (aiosqlite < 0.22: the
        # connection is the thread.)
        thread: Any = getattr(conn, "_thread", conn)
        thread.daemon = True
        return await conn

    return connect


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


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
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            if parsed.get_driver_name() == "aiosqlite" and not parsed.query:
                kwargs["async_creator"] = _in_loop_connector(database or ":memory:")
        else:
            # No pre-ping: it cost three round trips per checkout (a sixth of a call's, in
            # bench/webhooks.py). A connection PostgreSQL closed (restart, failover) fails the
            # one statement that finds it, the pool then drops every connection opened before
            # it, and the API answers that request 503 database_unavailable. 30 kept
            # connections: with 64 requests in flight, 10 made the pool open and close
            # overflow connections all the time.
            kwargs.update(pool_size=30, max_overflow=20, pool_pre_ping=False)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self._versions: dict[str, int] = {}
        if self.is_sqlite:
            _owners[self.engine.sync_engine] = self
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", self._began)
            event.listen(self.engine.sync_engine, "after_cursor_execute", self._wrote)
            event.listen(self.engine.sync_engine, "commit", self._committed)
            event.listen(self.engine.sync_engine, "rollback", self._rolled_back)
        # This database's own Session class, for its sessions and the group commit's: hooks
        # put on it (relay.events.attach) see this database's transactions only.
        self.session_class: type[Session] = type("Session", (Session,), {})
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=self.session_class
        )
        self._write_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._group: _GroupCommit | None = None
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

        Objects it ``session.add``s, and rows it hands to :func:`insert_at_commit`, are written
        when the transaction commits (one flush for the group), not before its next
        statement: ``work`` does not read them back. A read may come this way too, to share
        a group's transaction instead of opening its own."""
        loop = asyncio.get_running_loop()
        if self._group is None or self._group.loop is not loop:
            self._group = _GroupCommit(self, loop)
        return await self._group.submit(work)

    def table_version(self, table: str) -> int | None:
        """A number that changes whenever ``table`` may have changed (a write to it ran or
        committed, in this process); None on PostgreSQL, where other nodes write too. Read
        it before a query and keep what the query found only while it stays the same."""
        if not self.is_sqlite:
            return None
        return self._versions.get(table, 0) + self._versions.get(_ANY_TABLE, 0)

    def snapshot_version(self, conn: Connection, tables: tuple[str, ...]) -> tuple[int, ...] | None:
        """The versions of ``tables`` that what ``conn``'s open transaction reads reflects:
        those of when it began, if none has moved since (a SQLite read transaction sees the
        database as of its first statement, which may be older than the versions now). None
        if one has moved, or on PostgreSQL: a cache must not keep what such a read found."""
        began = conn.info.get(_AT_BEGIN)
        if began is None:
            return None
        now = tuple(self.table_version(table) or 0 for table in tables)
        then = tuple(began.get(t, 0) + began.get(_ANY_TABLE, 0) for t in tables)
        return now if now == then else None

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
            tables = {table.name} if isinstance(table, Table) else {_ANY_TABLE}
        elif isinstance(compiled, Select) or statement.lstrip()[:6].upper() in _READS:
            return
        else:  # text, DDL: it may have written anything
            tables = {_ANY_TABLE}
        self._note_write(conn.info, tables)

    def _note_write(self, info: dict[Any, Any], tables: set[str]) -> None:
        """A statement on the connection whose ``info`` this is wrote ``tables``."""
        self._bump(tables)
        info.setdefault(_TOUCHED, set()).update(tables)

    def _committed(self, conn: Connection) -> None:
        conn.info.pop(_AT_BEGIN, None)
        self._bump(conn.info.pop(_TOUCHED, set()))

    def _rolled_back(self, conn: Connection) -> None:
        conn.info.pop(_AT_BEGIN, None)
        conn.info.pop(_TOUCHED, None)

    def _writer_lock(self) -> asyncio.Lock:
        # One lock per event loop: a CLI command may run several loops on one handle.
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock[0] is not loop:
            self._write_lock = (loop, asyncio.Lock())
        return self._write_lock[1]

    async def migrate(self) -> None:
        """Bring the schema to the newest revision."""

        def upgrade(conn: Connection) -> None:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrations_current(self) -> bool:
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

        def current(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        async with self.engine.connect() as conn:
            return await conn.run_sync(current) == head

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


class _GroupCommit:
    """The queue of :meth:`Database.write` calls of one event loop, and the task that commits
    them in groups, in the order they were queued."""

    def __init__(self, db: Database, loop: asyncio.AbstractEventLoop) -> None:
        self.db = db
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
                # instead of each into a group of its own. With it, bench/sms.py answered
                # 285-319 texts/s where it answered 231-264 (3.0-3.4 ms of CPU per text,
                # against 3.7-4.2), and its p99 at 300 texts/s paced fell from 185-268 ms
                # to 108-120.
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
        half of a one-statement transaction on SQLite (225 -> 105 us). What a transaction
        loaded is let go when it ends, so the next one reads the store afresh. A connection
        PostgreSQL closed fails the transaction that finds it, which invalidates it: the
        next one connects again (SQLAlchemy's reconnect on next use)."""
        if self._session is None:
            self._conn = conn = await self.db.engine.connect()
            self._session = self.db.sessions(bind=conn)
        session = self._session
        try:
            async with self.db._writer_lock(), session.begin():
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


class SnapshotCache(Generic[K, T]):
    """What a read in a session's transaction found, kept per :class:`Database` by ``key``
    while none of ``tables`` has been written (:meth:`Database.snapshot_version`; SQLite
    only: elsewhere every ``get`` reads). Everyone asking while it stays current gets the
    same value: read it, never change it. Past ``max_items`` keys it starts afresh."""

    def __init__(self, tables: tuple[str, ...], max_items: int = 10_000) -> None:
        self.tables = tables
        self.max_items = max_items
        # Database -> key -> (the tables' versions, the value)
        self._found: weakref.WeakKeyDictionary[Database, dict[K, tuple[tuple[int, ...], T]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(
        self, session: AsyncSession, db: Database | None, key: K, read: Callable[[], Awaitable[T]]
    ) -> T:
        """The value kept for ``key``, or ``await read()`` (in ``session``), kept if no
        table moved while it ran."""
        if db is None or not db.is_sqlite:
            return await read()
        conn = (await session.connection()).sync_connection
        version = None if conn is None else db.snapshot_version(conn, self.tables)
        if conn is None or version is None:
            return await read()
        found = self._found.setdefault(db, {})
        hit = found.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = await read()
        if db.snapshot_version(conn, self.tables) == version:
            if len(found) >= self.max_items:
                found.clear()
            found[key] = (version, value)
        return value
