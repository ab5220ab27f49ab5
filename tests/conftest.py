"""Fixtures: every API test runs on SQLite AND on the PostgreSQL server of this machine."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.app import create_app
from relay.auth import create_key
from relay.config import Settings
from relay.events import attach
from relay.handset.fake_twilio import FakeTwilio
from relay.store.db import Database

PG_DSN = os.environ.get("RELAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_URL = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
        attach(db)
        yield db
        await db.close()
        return
    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f"CREATE SCHEMA {schema}")
    db = Database(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    attach(db)
    try:
        yield db
    finally:
        await db.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


# The deployment's own Twilio account (RELAY_TWILIO_*), at a fake of Twilio's REST API that
# says it owns any number asked about: imports under it succeed in tests not about ownership.
DEPLOYMENT_SID = "AC" + "d" * 32
DEPLOYMENT_TOKEN = "deployment-twilio-auth-token"


@pytest.fixture
async def twilio_rest(aiohttp_server: Any) -> tuple[FakeTwilio, str]:
    """A fake Twilio REST API and its base URL, holding the deployment's account."""
    fake = FakeTwilio(DEPLOYMENT_SID, DEPLOYMENT_TOKEN)
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


def deployment_twilio(base_url: str) -> dict[str, str]:
    """Settings for the deployment's own Twilio account at ``base_url``."""
    return {
        "twilio_account_sid": DEPLOYMENT_SID,
        "twilio_auth_token": DEPLOYMENT_TOKEN,
        "twilio_api_base_url": base_url,
    }


@pytest.fixture
def settings(twilio_rest: tuple[FakeTwilio, str]) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        **deployment_twilio(twilio_rest[1]),
    )


# Every fixture that starts an app asks for ``database`` BEFORE ``aiohttp_client``: fixtures
# are torn down in reverse, so the app (its workers, their pooled connections) stops before
# the database closes and its PostgreSQL schema is dropped. The other way round, workers
# kept querying a closed engine, which opens new connections nobody closes ("unclosed
# connection" in the GC) and can deadlock with the DROP SCHEMA.
@pytest.fixture
async def client(
    database: Database,
    settings: Settings,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> TestClient[Any, Any]:
    app = create_app(settings, db=database)
    return await aiohttp_client(app)


KeyMaker = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def make_key(database: Database, client: TestClient[Any, Any]) -> KeyMaker:
    """Headers carrying a new key: ``await make_key("proj-a", kind="publishable", ...)``."""

    async def make(project: str = "proj-a", **kwargs: Any) -> dict[str, str]:
        async with database.session() as session:
            raw, _ = await create_key(session, project, **kwargs)
        return {"Authorization": f"Bearer {raw}"}

    return make


@pytest.fixture
async def auth(make_key: KeyMaker) -> dict[str, str]:
    return await make_key("proj-a")


RawKeyMaker = Callable[..., Awaitable[str]]


@pytest.fixture
def raw_key(database: Database) -> RawKeyMaker:
    """A new key in the clear: ``await raw_key("proj-b", kind="publishable", channels=[...])``.

    The schema must exist first: start an app on ``database`` (``client``, ``app_client``)."""

    async def make(project: str = "proj-a", **kwargs: Any) -> str:
        async with database.session() as session:
            raw, _ = await create_key(session, project, **kwargs)
        return raw

    return make


ClientMaker = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def app_client(
    database: Database, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> ClientMaker:
    """A test client for an app with its own settings, on the test's database:
    ``await app_client(Settings(...), setup=lambda app: app.router.add_get(...))``."""

    async def make(
        settings: Settings | None = None,
        setup: Callable[[web.Application], object] | None = None,
    ) -> TestClient[Any, Any]:
        app = create_app(settings or Settings(allow_private_webhooks=True), db=database)
        if setup is not None:
            setup(app)
        return await aiohttp_client(app)

    return make


# The speech engines' native libraries (ctranslate2, onnxruntime, via nanobind) sometimes
# abort the interpreter while it tears itself down after the last test ("terminate called
# without an active exception", exit 134), a green run included. The suite's result is
# pytest's own exit status, so once everything is reported the process ends with it and
# skips that teardown. Seen with the web-call voice tests about one run in three.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _EXIT_STATUS and os.environ.get("RELAY_TEST_NATIVE_TEARDOWN") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
