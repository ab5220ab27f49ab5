"""``Database.write``: writes queued together commit together, each keeps its own outcome."""

from __future__ import annotations

import asyncio
import stat
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.db import Database
from relay.store.models import Project


def add_project(name: str) -> Any:
    async def work(session: AsyncSession) -> str:
        session.add(Project(id=f"prj_{name}", name=name))
        return name

    return work


async def names(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.execute(select(Project.name).order_by(Project.name))).scalars())


async def test_writes_queued_together_commit_in_one_transaction_and_in_order(database):
    await database.migrate()
    transactions = 0

    def count(_conn: Any) -> None:
        nonlocal transactions
        transactions += 1

    event.listen(database.engine.sync_engine, "commit", count)
    results = await asyncio.gather(*(database.write(add_project(f"p{i:02d}")) for i in range(20)))
    # The 20 writes queued in one turn of the loop share one COMMIT.
    assert transactions == 1
    assert results == [f"p{i:02d}" for i in range(20)]
    assert await names(database) == [f"p{i:02d}" for i in range(20)]


async def test_a_failing_write_in_a_group_fails_alone(database):
    await database.migrate()
    await database.write(add_project("taken"))
    outcomes = await asyncio.gather(
        database.write(add_project("a")),
        database.write(add_project("taken")),  # the unique name refuses it
        database.write(add_project("b")),
        return_exceptions=True,
    )
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert isinstance(outcomes[1], IntegrityError)
    assert await names(database) == ["a", "b", "taken"]


async def test_a_write_reads_what_the_writes_before_it_committed_to_the_same_group(database):
    await database.migrate()

    async def first(session: AsyncSession) -> None:
        await session.execute(
            text(
                "INSERT INTO projects (id, name, recording_retention_days, created_at) "
                "VALUES ('prj_x', 'x', 90, CURRENT_TIMESTAMP)"
            )
        )

    async def second(session: AsyncSession) -> int:
        return int((await session.execute(select(func.count()).select_from(Project))).scalar_one())

    _, seen = await asyncio.gather(database.write(first), database.write(second))
    assert seen == 1


async def test_a_cancelled_caller_does_not_stop_the_others(database):
    await database.migrate()
    waiting = asyncio.ensure_future(database.write(add_project("gone")))
    kept = asyncio.ensure_future(database.write(add_project("kept")))
    waiting.cancel()
    assert await kept == "kept"
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert "kept" in await names(database)


async def test_snapshot_version_is_kept_only_while_nothing_moved_since_the_transaction_began(
    database,
):
    await database.migrate()
    tables = ("projects",)
    async with database.session() as session:
        conn = (await session.connection()).sync_connection
        assert conn is not None
        before = database.snapshot_version(conn, tables)
        if not database.is_sqlite:
            assert before is None  # other nodes write too: nothing may be kept
            return
        assert before is not None
        await database.write(add_project("elsewhere"))  # another connection, committed
        assert database.snapshot_version(conn, tables) is None
        assert database.snapshot_version(conn, ("agents",)) == (database.table_version("agents"),)
    async with database.session() as session:
        conn = (await session.connection()).sync_connection
        assert conn is not None
        now = database.snapshot_version(conn, tables)
        assert now is not None and now != before
        session.add(Project(id="prj_mine", name="mine"))
        await session.flush()  # its own write moves the version too
        assert database.snapshot_version(conn, tables) is None


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_connection_postgresql_closed_fails_one_statement_and_the_pool_recovers(database):
    """No pre-ping on checkout (it cost three round trips): after PostgreSQL closes the
    pool's connections, the one statement that finds a closed one fails, invalidated, and
    the pool replaces every connection opened before it."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from tests.conftest import PG_DSN

    async def backend_pid() -> int:
        async with database.session() as session:
            return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    pids = set(await asyncio.gather(*(backend_pid() for _ in range(4))))
    admin = await asyncpg.connect(PG_DSN)
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    with pytest.raises(DBAPIError) as failed:
        await backend_pid()
    assert failed.value.connection_invalidated
    fresh = {await backend_pid() for _ in range(4)}
    assert not fresh & pids


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_the_group_commit_connects_again_after_its_connection_is_closed(database):
    """The group commit keeps one connection between transactions: when PostgreSQL closes
    it, the write that finds it closed fails, and the next one runs on a new connection."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from tests.conftest import PG_DSN

    await database.migrate()

    async def backend_pid(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    first = await database.write(backend_pid)
    assert await database.write(backend_pid) == first  # kept
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    with pytest.raises(DBAPIError) as failed:
        await database.write(backend_pid)
    assert failed.value.connection_invalidated
    again = await database.write(backend_pid)
    assert again != first
    assert await database.write(add_project("after")) == "after"
    assert await names(database) == ["after"]


def test_sqlite_stores_aware_times_as_sqlalchemy_would_and_refuses_naive_ones():
    """UTCDateTime's own SQLite bind processor (one isoformat call) writes what
    SQLAlchemy's DATETIME writes: rows written before it, and readers, see one format."""
    import random
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.dialects import sqlite
    from sqlalchemy.dialects.sqlite import DATETIME

    from relay.store.models import UTCDateTime

    ours = UTCDateTime().bind_processor(sqlite.dialect())
    theirs = DATETIME(timezone=True).bind_processor(sqlite.dialect())
    assert ours is not None and theirs is not None
    rng = random.Random(7)
    for _ in range(2000):
        value = datetime(
            rng.randint(1, 9999),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.choice([0, rng.randint(0, 999_999)]),
            tzinfo=rng.choice([UTC, timezone(timedelta(hours=-7))]),
        )
        assert ours(value) == theirs(value)
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2026, 11, 22))


async def test_a_new_sqlite_file_and_its_wal_are_readable_by_the_owner_only(tmp_path):
    path = tmp_path / "data" / "relay.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await db.migrate()
        async with db.session() as session:
            session.add(Project(id="proj_modes", name="modes"))
        wal = path.with_name("relay.db-wal")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not wal.exists() or stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await db.close()
