"""``writing(db)``: :meth:`relay.store.db.Database.writing`, for the callers that import it
from here. On SQLite it queues the process's writers on one lock (see :mod:`relay.store.db`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.db import Database


def writing(db: Database) -> AbstractAsyncContextManager[AsyncSession]:
    """``db.session()`` for a transaction that writes: on SQLite, after the writers before it."""
    return db.writing()


__all__ = ["writing"]
