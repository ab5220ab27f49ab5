"""One writer at a time on SQLite, queued in the process instead of in SQLite's busy handler.

SQLite lets one transaction write at a time. A writer that finds the lock taken sleeps in
SQLite's busy handler (1, 2, 5, 10 ... 100 ms) and retries: under a steady stream of short
transactions (webhook delivery cycles between API requests) that costs tens of milliseconds
per wait and is unfair. Queueing on an ``asyncio.Lock`` first hands the lock over in order,
the moment it is free. On PostgreSQL (row locks, many writers) nothing is queued.

(The SMS service queues its writers the same way; one lock per database, shared by every
writer of the process, would belong in :class:`relay.store.db.Database`.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.db import Database

_locks: weakref.WeakKeyDictionary[Database, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(db: Database) -> AsyncIterator[AsyncSession]:
    """``db.session()`` for a transaction that writes: on SQLite, after the writers before it."""
    if not db.is_sqlite:
        async with db.session() as session:
            yield session
        return
    lock = _locks.get(db)
    if lock is None:
        lock = _locks[db] = asyncio.Lock()
    async with lock, db.session() as session:
        yield session


__all__ = ["writing"]
