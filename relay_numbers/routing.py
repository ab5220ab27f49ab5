"""Which agent answers a number: the lookup carriers' inbound webhooks make.

A number is found by (carrier account, number): the ``carrier_key`` the carrier's request
names (Twilio's signed ``AccountSid``; the sim's API key's project) and the called number. A
number imported by another project under another account is not reached, whatever its value.

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
from relay_numbers.keys import sim_key

# Built once, the number as a parameter: no expression building or cache-key hashing per text.
_ACTIVE = select(Number).where(
    Number.carrier_key == bindparam("b_carrier_key"),
    Number.phone_number == bindparam("b_phone_number"),
    Number.released_at.is_(None),
)
_DEPENDS_ON = ("numbers", "agents", "projects")
_CACHE_MAX = 10_000
_COLUMNS = tuple(column.key for column in Number.__mapper__.column_attrs)

# Database -> (carrier key, phone number) -> (the tables' versions, the number's columns or None)
_Found = dict[tuple[str, str], tuple[Any, dict[str, Any] | None]]
_found: weakref.WeakKeyDictionary[Database, _Found] = weakref.WeakKeyDictionary()


def _version(db: Database) -> tuple[int | None, ...] | None:
    versions = tuple(db.table_version(table) for table in _DEPENDS_ON)
    return None if None in versions else versions


async def number_for_inbound(
    db: Database, phone_number: str, carrier_keys: tuple[str, ...]
) -> Number | None:
    """The active number with this E.164 value under the first of ``carrier_keys`` that has
    one, whichever project owns it (a copy of its own for each caller)."""
    for carrier_key in carrier_keys:
        found = await _one(db, carrier_key, phone_number)
        if found is not None:
            return found
    return None


async def _one(db: Database, carrier_key: str, phone_number: str) -> Number | None:
    version = _version(db)
    cache = _found.setdefault(db, {}) if version is not None else None
    if cache is not None:
        hit = cache.get((carrier_key, phone_number))
        if hit is not None and hit[0] == version:
            return None if hit[1] is None else Number(**hit[1])
    params = {"b_carrier_key": carrier_key, "b_phone_number": phone_number}
    async with db.session() as session:
        row: Number | None = (await session.execute(_ACTIVE, params)).scalar_one_or_none()
    if cache is not None and _version(db) == version:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        columns = None if row is None else {key: getattr(row, key) for key in _COLUMNS}
        cache[(carrier_key, phone_number)] = (version, columns)
    return row


async def project_number(db: Database, project_id: str, phone_number: str) -> Number | None:
    """The project's active number with this value, on any of its carrier accounts (its sim
    account's first): what a call the project places itself (sim handset, websocket) uses."""
    found = await _one(db, sim_key(project_id), phone_number)
    if found is not None:
        return found
    async with db.session() as session:
        row: Number | None = (
            await session.execute(
                select(Number)
                .where(
                    Number.project_id == project_id,
                    Number.phone_number == phone_number,
                    Number.released_at.is_(None),
                )
                .order_by(Number.id)
                .limit(1)
            )
        ).scalar_one_or_none()
    return row
