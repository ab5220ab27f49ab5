"""The agent that answers a text, read in the text's transaction.

On SQLite what the query found for an agent is kept while ``agents`` has not been written
(:meth:`relay.store.db.Database.snapshot_version`): every text asks, and agents change
rarely. What is kept is an ``Agent`` made from the row's columns, never part of a session
(a rollback cannot expire it), and every text answered while it stays current gets that same
object: read it, never change it.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store import Database, SnapshotCache
from relay.store.models import Agent
from sms.store import table_of

_agents = table_of(Agent)
# Built once, the id as a parameter (see sms.store).
_LIVE = select(_agents).where(_agents.c.id == bindparam("b_id"), _agents.c.deleted_at.is_(None))
# (attribute, column): what Agent(...) takes, from what the row holds
_KEYS = tuple((attr.key, attr.columns[0]) for attr in Agent.__mapper__.column_attrs)
_found: SnapshotCache[str, Agent | None] = SnapshotCache(("agents",))


async def live_agent(session: AsyncSession, db: Database, agent_id: str | None) -> Agent | None:
    """The agent ``agent_id`` unless it is deleted, as ``session``'s transaction sees it
    (on SQLite, maybe an object other callers hold too: do not change it)."""
    if agent_id is None:
        return None

    async def read() -> Agent | None:
        row = (await session.execute(_LIVE, {"b_id": agent_id})).first()
        return None if row is None else Agent(**{key: row._mapping[c] for key, c in _KEYS})

    return await _found.get(session, db, agent_id, read)
