"""Migrations on a database that holds rows already: what old rows become."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from relay.auth import Allowances, hash_key
from relay.store.db import Database
from relay.store.migrate import alembic_config
from relay.store.models import ApiKey


async def to_revision(db: Database, revision: str, *, down: bool = False) -> None:
    def run(conn: Connection) -> None:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


async def test_0010_gives_keys_made_before_it_the_narrow_publishable_defaults(database):
    await to_revision(database, "0009")
    async with database.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO projects (id, name, recording_retention_days, created_at) "
                "VALUES ('proj_1', 'p', 90, CURRENT_TIMESTAMP)"
            )
        )
        for key_id, kind, channels in (
            ("key_pk", "publishable", '["web", "phone"]'),
            ("key_sk", "secret", None),
        ):
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, project_id, kind, key_hash, hint, "
                    "allowed_channels, created_at) "
                    "VALUES (:id, 'proj_1', :kind, :hash, 'x', :channels, CURRENT_TIMESTAMP)"
                ),
                {"id": key_id, "kind": kind, "hash": hash_key(key_id), "channels": channels},
            )
    await database.migrate()
    async with database.session() as session:
        pk = await session.get(ApiKey, "key_pk")
        sk = await session.get(ApiKey, "key_sk")
    assert pk is not None and sk is not None
    assert pk.allowed_channels == ["web", "phone"]
    assert Allowances.of(pk) == Allowances()  # no origins, home country, nothing extra
    assert pk.max_metadata_bytes == 1024  # stored: a later default does not move it
    assert (sk.allowed_origins, sk.allowed_destinations, sk.max_metadata_bytes) == (
        None,
        None,
        None,
    )

    await to_revision(database, "0009", down=True)
    async with database.engine.connect() as conn:
        kept = (await conn.execute(text("SELECT id FROM api_keys ORDER BY id"))).scalars()
        assert list(kept) == ["key_pk", "key_sk"]


async def test_an_upgrade_that_rebuilds_a_table_keeps_every_row_that_references_it(database):
    # 0011 rebuilds `numbers` on SQLite (batch mode: copy, drop, rename); with foreign keys
    # on during the upgrade, the drop nulled every call's number_id.
    await to_revision(database, "0010")
    async with database.engine.begin() as conn:
        for sql in (
            "INSERT INTO projects (id, name, recording_retention_days, created_at) "
            "VALUES ('p1', 'p', 90, CURRENT_TIMESTAMP)",
            "INSERT INTO numbers (id, project_id, phone_number, country, provider, source, "
            "capabilities, created_at) VALUES ('num_1', 'p1', '+14155550100', 'US', 'sim', "
            "'provisioned', '[]', CURRENT_TIMESTAMP)",
            "INSERT INTO calls (id, project_id, number_id, direction, connection_type, status, "
            "voice_mode, agent_snapshot, metadata, created_at) VALUES ('call_1', 'p1', 'num_1', "
            "'inbound', 'sim', 'completed', 'webhook', '{}', '{}', CURRENT_TIMESTAMP)",
        ):
            await conn.execute(text(sql))
    await database.migrate()
    async with database.engine.connect() as conn:
        kept = (
            await conn.execute(text("SELECT number_id FROM calls WHERE id = 'call_1'"))
        ).scalar()
        if database.engine.dialect.name == "sqlite":  # and foreign keys are on again
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    assert kept == "num_1"
