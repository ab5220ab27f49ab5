"""SQLite as the database handle runs it: WAL, and every call on the event loop's own thread.

SQLite calls run on the event loop's own thread (:class:`InLoopSqlite`), not on aiosqlite's
per-connection thread: a statement on an indexed row takes microseconds, while each hop to
that thread and back (a cursor, an execute, a fetch, a close: four per statement) cost tens
of microseconds of CPU and a wake-up of the loop. What can block the loop is a lock another
process holds (``busy_timeout``); this process's writers queue on ``Database.writing``
instead, and under WAL a commit does not fsync (``synchronous=NORMAL``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

BUSY_TIMEOUT_S = 5.0  # how long a statement waits for a lock another process holds


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """The engine's ``connect`` hook: WAL, no fsync per commit, foreign keys, busy handling."""
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


def in_loop_connector(database: str) -> Callable[[], Any]:
    """The engine's ``async_creator`` for the SQLite file ``database``: :class:`InLoopSqlite`
    connections."""

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
