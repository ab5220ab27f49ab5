"""Fixtures for lifecycle webhook tests: a relay with a compressed retry schedule and a local
receiver. ``client`` is redefined so the app (and its delivery worker) stops before the
test's database is dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from relay.app import create_app
from relay.auth import create_key
from relay.config import Settings
from relay.events import emit
from relay.store.models import Project
from tests.events.receiver import Receiver

TEST_SETTINGS: dict[str, Any] = {
    "allow_private_webhooks": True,
    "rate_limit_per_second": 1000,
    "rate_limit_burst": 1000,
    "webhook_retry_schedule": "0,50ms,50ms,50ms,50ms",
    "webhook_delivery_timeout_seconds": 2,
    "outbound_ring_timeout_seconds": 60,
}


@pytest.fixture
def settings() -> Settings:
    return Settings(**TEST_SETTINGS)


@pytest.fixture
async def client(database, aiohttp_client, settings):
    return await aiohttp_client(create_app(settings, db=database))


@pytest.fixture
def relay(database, aiohttp_client):
    """``await relay(setting=value, ...)``: a client for an app with other settings (use it
    instead of ``client``, not beside it: one delivery worker per database)."""

    async def make(**overrides: Any) -> Any:
        settings = Settings(**{**TEST_SETTINGS, **overrides})
        return await aiohttp_client(create_app(settings, db=database))

    return make


async def key_headers(database: Any, project: str = "proj-a", **kwargs: Any) -> dict[str, str]:
    async with database.session() as session:
        raw, _ = await create_key(session, project, **kwargs)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def project_id(database: Any, name: str = "proj-a") -> str:
    async with database.session() as session:
        return str(await session.scalar(select(Project.id).where(Project.name == name)))


async def add_endpoint(client: Any, auth: dict[str, str], url: str, **fields: Any) -> Any:
    resp = await client.post("/v1/webhook-endpoints", json={"url": url, **fields}, headers=auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def emit_events(database: Any, project: str, *events: tuple[str, str]) -> list[str]:
    """Commit ``(type, ordering key)`` lifecycle events, one transaction each, in order."""
    ids = []
    for type_, key in events:
        async with database.session() as session:
            evt = await emit(
                session,
                project_id=project,
                type=type_,
                data={"callId": key, "status": type_.removeprefix("call.")},
                ordering_key=key,
            )
        ids.append(evt.id)
    return ids
