"""``Prepared``: a statement built once runs the same on SQLite's driver connection as
through the session (PostgreSQL), and keeps the store's contracts: typed values both ways,
SQLAlchemy's errors, table versions, the transaction's rollback, rows inserted at commit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import JSON, String, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store import Database, Prepared, insert_at_commit
from relay.store.models import Conversation, Project
from sms.store import table_of

conversations, projects = table_of(Conversation), table_of(Project)

_SET_STATE = Prepared(
    update(conversations)
    .where(conversations.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state", type_=JSON),
        updated_at=bindparam("b_now", type_=conversations.c.updated_at.type),
        message_count=7,  # a constant of the statement itself
    )
    .returning(conversations.c.state, conversations.c.updated_at, conversations.c.message_count)
)
_READ = Prepared(
    select(conversations.c.id, conversations.c.state, conversations.c.last_message_at)
    .where(conversations.c.project_id == bindparam("b_project", type_=String))
    .order_by(conversations.c.id)
)
_RENAME = Prepared(
    update(projects).where(projects.c.id == bindparam("b_id")).values(name=bindparam("b_name"))
)
NOW = datetime(2026, 11, 22, 3, 4, 5, 678000, tzinfo=UTC)


async def _seed(database: Database) -> None:
    await database.migrate()

    async def work(session: AsyncSession) -> None:
        session.add_all([Project(id="prj_a", name="a"), Project(id="prj_b", name="b")])
        await session.flush()
        for n in (1, 2):
            insert_at_commit(
                session,
                conversations,
                {
                    "id": f"cnv_{n}",
                    "project_id": "prj_a",
                    "our_number": "+15550000000",
                    "their_number": f"+1555000000{n}",
                    "message_count": 0,
                    "state": {"n": n, "tags": ["x", "é"]} if n == 1 else None,
                    "last_message_at": NOW if n == 1 else None,
                    "created_at": NOW,
                    "updated_at": NOW,
                },
            )

    await database.write(work)


def _aware(value: Any) -> Any:
    # PostgreSQL gives aware times, SQLite naive UTC ones (the models' contract either way)
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and not value.tzinfo else value


async def test_values_go_in_and_come_back_typed_as_through_the_session(database: Database):
    await _seed(database)
    async with database.writing() as session:
        rows = await _SET_STATE.rows(
            session, {"b_id": "cnv_2", "b_state": {"step": 2, "ok": True}, "b_now": NOW}
        )
        assert [(r[0], _aware(r[1]), r[2]) for r in rows] == [({"step": 2, "ok": True}, NOW, 7)]
    async with database.session() as session:
        found = await _READ.rows(session, {"b_project": "prj_a"})
        through_session = [
            tuple(r) for r in await session.execute(_READ.stmt, {"b_project": "prj_a"})
        ]
    assert [(i, s, _aware(t)) for i, s, t in found] == [
        ("cnv_1", {"n": 1, "tags": ["x", "é"]}, NOW),
        ("cnv_2", {"step": 2, "ok": True}, None),
    ]
    assert found == through_session


async def test_rowcount_and_rollback(database: Database):
    await _seed(database)
    async with database.writing() as session:
        assert await _RENAME.rowcount(session, {"b_id": "prj_a", "b_name": "renamed"}) == 1
        assert await _RENAME.rowcount(session, {"b_id": "prj_nope", "b_name": "x"}) == 0
    with pytest.raises(RuntimeError):
        async with database.writing() as session:
            await _RENAME.rowcount(session, {"b_id": "prj_b", "b_name": "lost"})
            raise RuntimeError("roll it back")
    async with database.session() as session:
        names = (await session.execute(select(Project.name).order_by(Project.id))).scalars()
        assert list(names) == ["renamed", "b"]


async def test_a_constraint_error_is_sqlalchemys_and_fails_only_its_write(database: Database):
    await _seed(database)
    with pytest.raises(IntegrityError):
        async with database.writing() as session:
            await _RENAME.rowcount(session, {"b_id": "prj_b", "b_name": "a"})  # names are unique

    def clash(session: AsyncSession) -> Any:
        async def work() -> None:
            insert_at_commit(session, projects, {"id": "prj_c", "name": "a", "created_at": NOW})

        return work()

    with pytest.raises(IntegrityError):
        await database.write(clash)


async def test_writes_move_the_table_versions_reads_do_not(database: Database):
    await _seed(database)
    before = database.table_version("projects")
    async with database.session() as session:
        await _READ.rows(session, {"b_project": "prj_a"})
    assert database.table_version("projects") == before
    async with database.writing() as session:
        await _RENAME.rowcount(session, {"b_id": "prj_a", "b_name": "moved"})
    if database.is_sqlite:
        assert database.table_version("projects") != before
        assert database.table_version("conversations") is not None
    else:
        assert before is None and database.table_version("projects") is None


def test_a_statement_with_an_expanding_parameter_is_refused():
    from sqlalchemy.dialects import sqlite

    stmt = Prepared(
        select(projects.c.id).where(projects.c.id.in_(bindparam("b_ids", expanding=True)))
    )
    with pytest.raises(ValueError, match="expanding"):
        stmt._plan(sqlite.dialect())
