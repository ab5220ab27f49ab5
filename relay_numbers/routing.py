"""Which agent answers a number: the lookup carriers' inbound webhooks make."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from relay.store.db import Database
from relay.store.models import Number

# Built once, the number as a parameter: no expression building or cache-key hashing per text.
_ACTIVE = select(Number).where(
    Number.phone_number == bindparam("b_phone_number"), Number.released_at.is_(None)
)


async def number_for_inbound(db: Database, phone_number: str) -> Number | None:
    """The active number with this E.164 value, whichever project owns it."""
    async with db.session() as session:
        row: Number | None = (
            await session.execute(_ACTIVE, {"b_phone_number": phone_number})
        ).scalar_one_or_none()
    return row
