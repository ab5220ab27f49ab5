"""Statements the SMS code needs on both SQLite and PostgreSQL: upserts, counters, claims,
and the rows of texts inserted when their transaction commits (:func:`message_row`).

The SMS code's UPDATEs run with ``synchronize_session=False``: its sessions are one short
transaction each and do not hold the rows they update (the caller's copy comes from another
session and is set by hand), so the ORM's search of the session for them, which cost a fifth
of the CPU of an ``UPDATE``, finds nothing anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, RowMapping, String, Table, bindparam, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from relay.ids import new_id
from relay.store import Prepared
from relay.store.models import Base, Conversation, Message, utcnow


def table_of(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_conversations = table_of(Conversation)
messages = table_of(Message)
# Every column, with the models' defaults: the texts a group commits go in one executemany,
# whose rows must all name the same columns.
_MESSAGE_DEFAULTS: dict[str, Any] = {column.key: None for column in messages.columns} | {
    "keyword_handled": False,
    "segments": 1,
    "encoding": "gsm7",
    "work": "done",
}


def message_row(**values: Any) -> dict[str, Any]:
    """A ``messages`` row for :func:`relay.store.insert_at_commit`: ``values`` over the
    defaults, every column named."""
    unknown = values.keys() - _MESSAGE_DEFAULTS.keys()
    if unknown:
        raise TypeError(f"messages has no column {sorted(unknown)}")
    return _MESSAGE_DEFAULTS | values


@dataclass(slots=True, kw_only=True)
class SmsRow:
    """One ``messages`` row as a plain object: what the SMS pipeline passes around from the
    transaction that stores a text to the carrier and back. Not an ORM ``Message``: making
    one, and reading and setting its attributes, cost the relay about 8% of its CPU per
    text; the rows are written with :func:`relay.store.insert_at_commit` and changed
    with UPDATEs, never through the session's objects."""

    id: str
    project_id: str
    conversation_id: str
    seq: int
    agent_id: str | None
    number_id: str | None
    direction: str
    from_number: str
    to_number: str
    text: str
    media: list[Any] | None
    status: str
    provider: str
    carrier_key: str | None
    carrier_message_id: str | None
    in_reply_to: str | None
    keyword_handled: bool
    segments: int
    encoding: str
    error_code: str | None
    error_message: str | None
    work: str
    claimed_at: datetime | None
    claimed_by: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None


assert SmsRow.__dataclass_fields__.keys() == _MESSAGE_DEFAULTS.keys(), (
    "SmsRow must name every column"
)


def message_of(row: dict[str, Any] | RowMapping) -> SmsRow:
    """The :class:`SmsRow` of a ``messages`` row naming every column (:func:`message_row`, or
    a row read with ``messages.c``)."""
    return SmsRow(**row)


# The hot statements are built once, on the Core table, with their values as parameters: a
# statement object keeps its compiled-cache key, so executing it again skips building the
# expression, hashing it, and the ORM's handling of a bulk UPDATE (a third of an execute).
_take_seq = (
    update(_conversations)
    .where(
        _conversations.c.project_id == bindparam("b_project_id"),
        _conversations.c.our_number == bindparam("b_our_number"),
        _conversations.c.their_number == bindparam("b_their_number"),
    )
    .values(
        message_count=_conversations.c.message_count + bindparam("b_count", type_=Integer),
        last_message_at=bindparam("b_now", type_=_conversations.c.updated_at.type),
        updated_at=bindparam("b_now", type_=_conversations.c.updated_at.type),
        number_id=bindparam("b_number_id", type_=String),
        agent_id=func.coalesce(bindparam("b_agent_id", type_=String), _conversations.c.agent_id),
    )
    .returning(_conversations.c.id, _conversations.c.message_count, _conversations.c.state)
)
_TAKE_SEQ = Prepared(_take_seq)
_TAKE_SEQ_SET_STATE = Prepared(
    _take_seq.values(state=bindparam("b_state", type_=_conversations.c.state.type))
)


def upsert(
    session: AsyncSession,
    table: Table,
    values: dict[str, Any],
    keys: list[str],
    *,
    update_columns: dict[str, Any] | None = None,
) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` (or ``DO UPDATE SET update_columns``)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values)
    if update_columns:
        return stmt.on_conflict_do_update(index_elements=keys, set_=update_columns)
    return stmt.on_conflict_do_nothing(index_elements=keys)


async def next_seq(
    session: AsyncSession,
    *,
    project_id: str,
    our_number: str,
    their_number: str,
    number_id: str | None,
    agent_id: str | None,
    now: datetime | None = None,
    count: int = 1,
    set_state: bool = False,
    state: dict[str, Any] | None = None,
) -> tuple[str, int, dict[str, Any] | None]:
    """Find or start the conversation and take its next ``count`` message numbers (and,
    with ``set_state``, set its ``state``).

    The UPDATE comes first on purpose: it takes the write lock at once, so the transaction
    never has to upgrade a read lock (SQLite answers that with SQLITE_BUSY) and concurrent
    texts in one conversation queue on the row lock (PostgreSQL) in commit order.
    Returns (conversation id, the last seq taken, state)."""
    now = now or utcnow()
    stmt = _TAKE_SEQ_SET_STATE if set_state else _TAKE_SEQ
    params = {
        "b_project_id": project_id,
        "b_our_number": our_number,
        "b_their_number": their_number,
        "b_count": count,
        "b_now": now,
        "b_number_id": number_id,
        "b_agent_id": agent_id or None,
        "b_state": state,
    }
    rows = await stmt.rows(session, params)
    if not rows:
        await session.execute(
            upsert(
                session,
                _conversations,
                {
                    "id": new_id("cnv"),
                    "project_id": project_id,
                    "our_number": our_number,
                    "their_number": their_number,
                    "number_id": number_id,
                    "agent_id": agent_id,
                    "message_count": 0,
                    "created_at": now,
                    "updated_at": now,
                },
                ["project_id", "our_number", "their_number"],
            )
        )
        rows = await stmt.rows(session, params)
    (row,) = rows
    return row[0], row[1], row[2]
