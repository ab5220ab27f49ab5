"""What the tests of provisioned carrier numbers share: the API calls, and a store that
fails between the carrier's answer and the row (its table renamed away, then back)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text

from relay.state import APP_STATE


async def provision(client, auth, provider, account_id, status=201, **body) -> dict:
    body = {"provider": provider, "carrierAccountId": account_id, **body}
    resp = await client.post("/v1/numbers", json=body, headers=auth)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def numbers(client, auth) -> list[dict]:
    return (await (await client.get("/v1/numbers", headers=auth)).json())["data"]


async def _rename(client, old: str, new: str) -> None:
    async with client.app[APP_STATE].db.session() as session:
        await session.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


@asynccontextmanager
async def store_broken_by(client) -> AsyncIterator[object]:
    """Yields ``break_it(phone)``, an async hook for the fake carrier to call once the number
    is bought; the numbers table is put back on the way out."""
    broken = []

    async def break_it(phone: str) -> None:
        await _rename(client, "numbers", "numbers_away")
        broken.append(phone)

    try:
        yield break_it
    finally:
        if broken:
            await _rename(client, "numbers_away", "numbers")
