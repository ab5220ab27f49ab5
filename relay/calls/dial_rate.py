"""A carrier's calls-per-second limit, shared by every relay on one database.

A carrier account limits how many calls it starts per second (Twilio's default is one), and
every relay of a deployment dials through the same accounts: a limit each relay kept in its
own memory would let N relays dial N times too fast. So the limit lives in the database, one
row per carrier (:class:`~relay.store.models.DialRate`), spent in the claim's own transaction
(:mod:`relay.calls.dial_queue`): a claim that rolls back spends nothing, and two relays
claiming at once take turns on the row's lock (held for the rest of a short transaction).

The row holds the generic cell rate algorithm's theoretical arrival time: a dial is allowed
when the next one would not be due more than a burst of ``max(1, rate)`` dials ahead of now.
Time is the wall clock, which every node of a deployment shares (NTP).
"""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.models import DialRate


class SharedRate:
    """``per_second`` dials per carrier across the deployment (0: no limit)."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        # How far ahead of now the next dial may be due: a burst of max(1, rate) dials.
        self.tolerance = (max(1, int(per_second)) - 1) * self.interval

    async def take(self, session: AsyncSession, carrier: str, now: float | None = None) -> bool:
        """Spend one dial of ``carrier``'s in ``session``'s transaction, if one is free."""
        if self.per_second <= 0:
            return True
        now = time.time() if now is None else now
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(
            insert(DialRate).values(carrier=carrier, tat=now).on_conflict_do_nothing()
        )
        tat = (
            await session.execute(
                select(DialRate.tat).where(DialRate.carrier == carrier).with_for_update()
            )
        ).scalar_one()
        due = max(tat, now)
        if due - now > self.tolerance:
            return False
        await session.execute(
            update(DialRate).where(DialRate.carrier == carrier).values(tat=due + self.interval)
        )
        return True


__all__ = ["SharedRate"]
