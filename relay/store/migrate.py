"""Alembic on the database handle's engine: the schema's revisions live in ``migrations/``
next to this module; :meth:`Database.migrate` runs them up to the newest on the handle's own
connection, and :meth:`Database.migrations_current` tells whether a database is there."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x72656C6179  # "relay": the advisory lock key of a migration on PostgreSQL


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade_to_head(engine: AsyncEngine, url: str) -> None:
    """Bring the schema of ``engine``'s database (at ``url``) to the newest revision."""

    def run(conn: Connection) -> None:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite's batch mode copies a table and drops the old one, and with foreign
            # keys on, that drop deletes or nulls every row referencing the table. The
            # pragma is a no-op inside a transaction, so it is set before and after one.
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.commit()
        else:
            # Several nodes (or workers) starting at once: one migrates, the others wait for
            # it and then find nothing left to do. Released at the commit.
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        try:
            await conn.run_sync(run)
            await conn.commit()
            if sqlite:
                broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
                await conn.commit()
                if broken:
                    raise RuntimeError(f"migrations left broken references: {broken[:5]}")
        finally:
            if sqlite:
                await conn.rollback()
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()


async def at_head(engine: AsyncEngine, url: str) -> bool:
    """Whether ``engine``'s database (at ``url``) is at the newest revision."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(current) == head
