"""The ``relay`` command, run as a user would: a subprocess with RELAY_* in its environment."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select, text

from relay.app import create_app
from relay.config import Settings
from relay.store.models import Agent, ApiKey, Project

# ``relay`` is ``relay.cli:main``; run it from this checkout (the code under test), not from
# wherever the installed console script points.
RELAY = [sys.executable, "-m", "relay.cli"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def env(database, tmp_path):
    """Environment that points the CLI at the test's database (for PostgreSQL, its schema)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    out["RELAY_DATABASE_URL"] = database.url
    if not database.is_sqlite:
        async with database.engine.connect() as conn:
            out["RELAY_DATABASE_SCHEMA"] = (
                await conn.execute(text("SELECT current_schema()"))
            ).scalar_one()
    out["RELAY_DATA_DIR"] = str(tmp_path / "data")
    return out


async def run(env, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def key_rows(database) -> list[tuple[ApiKey, str]]:
    async with database.session() as session:
        rows = await session.execute(
            select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id)
        )
        return [(key, name) for key, name in rows]


async def test_keys_create_prints_a_secret_key_once_and_stores_its_hash(
    env, database, aiohttp_client
):
    code, out, err = await run(env, "keys", "create", "--project", "acme", "--name", "ci")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    key = lines[0]
    assert re.fullmatch(r"sk_[A-Za-z0-9_-]{32}", key), key
    assert key not in err
    assert "only its hash is kept" in err

    [(row, project)] = await key_rows(database)
    assert project == "acme"
    assert row.kind == "secret"
    assert row.name == "ci"
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.allowed_agents is None and row.allowed_channels is None
    stored = [getattr(row, c.key) for c in ApiKey.__table__.columns]
    assert not any(isinstance(v, str) and key in v for v in stored)
    assert not any(isinstance(v, str) and key[3:] in v for v in stored)

    # A second key is another key, in the same project.
    code, out2, _ = await run(env, "keys", "create", "--project", "acme")
    assert code == 0
    assert out2.strip() != key
    assert [p for _, p in await key_rows(database)] == ["acme", "acme"]

    # And the printed key opens the API.
    client = await aiohttp_client(create_app(Settings(), db=database))
    resp = await client.get("/v1/agents", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200


async def test_keys_create_publishable_with_scopes(env, database):
    code, out, err = await run(
        env,
        "keys",
        "create",
        "--project",
        "acme",
        "--publishable",
        "--channels",
        "web,phone",
        "--agents",
        "agt_x",
    )
    assert code == 0, err
    key = out.strip()
    assert re.fullmatch(r"pk_[A-Za-z0-9_-]{32}", key), key
    [(row, project)] = await key_rows(database)
    assert project == "acme"
    assert row.kind == "publishable"
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.allowed_channels == ["web", "phone"]
    assert row.allowed_agents == ["agt_x"]


async def test_keys_create_publishable_with_origins_destinations_and_allowances(env, database):
    code, out, err = await run(
        env,
        "keys",
        "create",
        "--publishable",
        "--channels",
        "phone",
        "--origins",
        "https://Shop.Example.com, http://localhost:3000",
        "--destinations",
        "+14155550123,+1212*",
        "--allow-variables",
        "--max-metadata-bytes",
        "2048",
    )
    assert code == 0, err
    [(row, _)] = await key_rows(database)
    assert row.allowed_origins == ["https://shop.example.com", "http://localhost:3000"]
    assert row.allowed_destinations == ["+14155550123", "+1212*"]
    assert (row.allow_variables, row.allow_post_call, row.max_metadata_bytes) == (
        True,
        False,
        2048,
    )
    # Without the flags: no page, the caller number's country, nothing extra.
    code, out, err = await run(env, "keys", "create", "--project", "p2", "--publishable")
    assert code == 0, err
    [row] = [r for r, project in await key_rows(database) if project == "p2"]
    assert (row.allowed_channels, row.allowed_origins, row.allowed_destinations) == (
        ["web"],
        [],
        None,
    )
    assert (row.allow_variables, row.allow_post_call, row.max_metadata_bytes) == (
        False,
        False,
        1024,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--publishable", "--channels", "web,fax"],
        ["--channels", "web"],  # scopes are for publishable keys only
        ["--agents", "agt_x"],
        ["--origins", "https://example.com"],
        ["--allow-variables"],
        ["--publishable", "--origins", "*"],
        ["--publishable", "--origins", "https://example.com/app"],
        ["--publishable", "--channels", "phone", "--destinations", "+1415"],
        ["--publishable", "--destinations", "+1415*"],  # the key may not phone
        ["--publishable", "--max-metadata-bytes", "99999"],
    ],
)
async def test_keys_create_refuses_bad_scopes_with_exit_code_2(env, database, args):
    code, out, err = await run(env, "keys", "create", "--project", "acme", *args)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    if "fax" in args[-1]:
        assert "'fax'" in err
    assert await key_rows(database) == []


async def created(env, *args: str) -> str:
    code, out, err = await run(env, "keys", "create", *args)
    assert code == 0, err
    return out.strip()


async def test_keys_list_shows_ids_and_hints_never_the_keys(env, database):
    acme = await created(env, "--project", "acme", "--name", "ci")
    web = await created(env, "--project", "acme", "--publishable", "--channels", "web")
    other = await created(env, "--project", "other")
    code, out, err = await run(env, "keys", "list")
    assert code == 0, err
    for raw in (acme, web, other):
        assert raw not in out and raw[7:] not in out
    header, *lines = out.splitlines()
    assert header.split("\t") == ["ID", "PROJECT", "KIND", "HINT", "NAME", "CREATED", "STATUS"]
    rows = {line.split("\t")[3]: line.split("\t") for line in lines}
    assert set(rows) == {acme[:7] + "...", web[:7] + "...", other[:7] + "..."}
    ids = {key.key_hash: key.id for key, _ in await key_rows(database)}
    row = rows[acme[:7] + "..."]
    assert row[0] == ids[hashlib.sha256(acme.encode()).hexdigest()]
    assert row[1:3] + row[4:5] + row[6:] == ["acme", "secret", "ci", "live"]
    assert rows[web[:7] + "..."][2] == "publishable"

    code, out, _ = await run(env, "keys", "list", "--project", "other")
    assert code == 0
    assert [line.split("\t")[3] for line in out.splitlines()[1:]] == [other[:7] + "..."]


async def key_id(database, raw: str) -> str:
    digest = hashlib.sha256(raw.encode()).hexdigest()
    return next(key.id for key, _ in await key_rows(database) if key.key_hash == digest)


async def test_keys_revoke_refuses_the_key_from_then_on(env, database, aiohttp_client):
    raw = await created(env, "--project", "acme")
    keep = await created(env, "--project", "acme")
    client = await aiohttp_client(create_app(Settings(), db=database))
    assert (await client.get("/v1/agents", headers={"X-API-Key": raw})).status == 200

    code, out, err = await run(env, "keys", "revoke", await key_id(database, raw))
    assert code == 0, err
    assert out == "" and "revoked key_" in err
    # A relay that cached the key may honour it a few seconds; one that did not refuses it.
    fresh = await aiohttp_client(create_app(Settings(), db=database))
    assert (await fresh.get("/v1/agents", headers={"X-API-Key": raw})).status == 401
    assert (await fresh.get("/v1/agents", headers={"X-API-Key": keep})).status == 200
    code, out, _ = await run(env, "keys", "list")
    assert sorted(line.split("\t")[6].split()[0] for line in out.splitlines()[1:]) == [
        "live",
        "revoked",
    ]

    code, out, err = await run(env, "keys", "revoke", "key_nope")
    assert (code, out) == (1, "")
    assert "no API key 'key_nope'" in err


async def test_keys_rotate_prints_a_new_key_and_the_old_one_stops(env, database, aiohttp_client):
    old = await created(env, "--project", "acme", "--publishable", "--channels", "web,phone")
    old_id = await key_id(database, old)
    code, out, err = await run(env, "keys", "rotate", old_id)
    assert code == 0, err
    new = out.strip()
    assert re.fullmatch(r"pk_[A-Za-z0-9_-]{32}", new), out
    assert "only its hash is kept" in err and new not in err
    rows = {key.key_hash: key for key, _ in await key_rows(database)}
    row = rows[hashlib.sha256(new.encode()).hexdigest()]
    assert (row.kind, row.allowed_channels) == ("publishable", ["web", "phone"])
    client = await aiohttp_client(create_app(Settings(), db=database))
    assert (await client.get("/v1/agents", headers={"X-API-Key": old})).status == 401
    assert (await client.get("/v1/agents", headers={"X-API-Key": new})).status == 403  # a pk_

    code, out, err = await run(env, "keys", "rotate", old_id)
    assert (code, out) == (1, "")
    assert "cannot rotate" in err


async def test_keys_rotate_with_a_grace_period_keeps_the_old_key_working(
    env, database, aiohttp_client
):
    old = await created(env, "--project", "acme")
    code, out, err = await run(
        env, "keys", "rotate", await key_id(database, old), "--grace-seconds", "3600"
    )
    assert code == 0, err
    new = out.strip()
    assert "still works for 3600 s" in err
    client = await aiohttp_client(create_app(Settings(), db=database))
    for raw in (old, new):
        assert (await client.get("/v1/agents", headers={"X-API-Key": raw})).status == 200
    code, out, _ = await run(env, "keys", "list")
    statuses = sorted(line.split("\t")[6].split()[0] for line in out.splitlines()[1:])
    assert statuses == ["live", "until"]
    for bad in ("-1", "604801", "soon"):
        code, _, err = await run(env, "keys", "rotate", "key_x", "--grace-seconds", bad)
        assert code == 2 and "grace-seconds" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def handler_waits_for(lock_of) -> None:
    """Return once the relay's INSERT is blocked on the test's lock."""
    if lock_of.is_sqlite:  # SQLite shows no lock waits: give the request ample time
        await asyncio.sleep(1.0)
        return
    async with lock_of.engine.connect() as probe:
        for _ in range(400):
            waiting = await probe.execute(
                text(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE NOT granted AND relation = 'agents'::regclass"
                )
            )
            if waiting.scalar_one():
                return
            await asyncio.sleep(0.05)
    pytest.fail("the request never reached the database")


async def test_serve_answers_and_finishes_in_flight_requests_on_sigterm(env, database):
    code, out, err = await run(env, "keys", "create", "--project", "acme")
    assert code == 0, err
    key = out.strip()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *RELAY,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={**env, "RELAY_ALLOW_PRIVATE_WEBHOOKS": "true"},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert proc.returncode is None, (await proc.stderr.read()).decode()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert resp.status == 200
                        assert await resp.json() == {"status": "ok"}
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("relay serve did not answer /healthz within 30 s")

            # A request in flight: the test holds a lock that the agent's INSERT waits for
            # (about 2 s: SQLite's busy timeout is 5 s).
            async with database.engine.connect() as lock:
                await lock.execute(
                    text(
                        "UPDATE projects SET name = name"
                        if database.is_sqlite
                        else "LOCK TABLE agents IN EXCLUSIVE MODE"
                    )
                )
                pending = asyncio.ensure_future(
                    http.post(
                        f"http://127.0.0.1:{port}/v1/agents",
                        json={"name": "Late", "webhookUrl": "http://127.0.0.1:9/hook"},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                )
                await handler_waits_for(lock_of=database)
                assert not pending.done()

                proc.send_signal(signal.SIGTERM)
                for _ in range(100):  # shutdown has begun once the listening socket is closed
                    if not await port_open(port):
                        break
                    await asyncio.sleep(0.02)
                else:
                    pytest.fail("the relay still accepts connections 2 s after SIGTERM")
                await asyncio.sleep(1.0)  # a request that takes a while yet
                assert proc.returncode is None  # still finishing our request
                assert not pending.done()
                await lock.rollback()

            resp = await asyncio.wait_for(pending, 30)
            assert resp.status == 201, await resp.text()
            created = await resp.json()
            assert created["name"] == "Late"

        code = await asyncio.wait_for(proc.wait(), 30)
        stderr = (await proc.stderr.read()).decode()
        assert code == 0, stderr
        assert "Traceback" not in stderr
        assert not await port_open(port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async with database.session() as session:
        agent = await session.get(Agent, created["id"])
        assert agent is not None and agent.name == "Late"
