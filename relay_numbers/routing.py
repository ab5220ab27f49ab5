"""Which agent answers a number: the lookup carriers' inbound webhooks make.

On SQLite (one process owns the file) what a lookup found is kept, and kept only while no
write to ``numbers``, ``agents`` or ``projects`` (a cascade can change a number) has run or
committed since: :meth:`relay.store.db.Database.table_version`. Every inbound text or call
asks, so this saves a query (and a transaction) per text.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import bindparam, select

from relay.store.db import Database
from relay.store.models import Number

# Built once, the number as a parameter: no expression building or cache-key hashing per text.
_ACTIVE = select(Number).where(
    Number.phone_number == bindparam("b_phone_number"), Number.released_at.is_(None)
)
_DEPENDS_ON = ("numbers", "agents", "projects")
_CACHE_MAX = 10_000
_COLUMNS = tuple(column.key for column in Number.__mapper__.column_attrs)

# Database -> phone number -> (the tables' versions, the number's columns or None)
_found: weakref.WeakKeyDictionary[Database, dict[str, tuple[Any, dict[str, Any] | None]]] = (
    weakref.WeakKeyDictionary()
)


def _version(db: Database) -> tuple[int | None, ...] | None:
    versions = tuple(db.table_version(table) for table in _DEPENDS_ON)
    return None if None in versions else versions


async def number_for_inbound(db: Database, phone_number: str) -> Number | None:
    """The active number with this E.164 value, whichever project owns it (a copy of its own
    for each caller)."""
    version = _version(db)
    cache = _found.setdefault(db, {}) if version is not None else None
    if cache is not None:
        hit = cache.get(phone_number)
        if hit is not None and hit[0] == version:
            return None if hit[1] is None else Number(**hit[1])
    async with db.session() as session:
        row: Number | None = (
            await session.execute(_ACTIVE, {"b_phone_number": phone_number})
        ).scalar_one_or_none()
    if cache is not None and _version(db) == version:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        columns = None if row is None else {key: getattr(row, key) for key in _COLUMNS}
        cache[phone_number] = (version, columns)
    return row
