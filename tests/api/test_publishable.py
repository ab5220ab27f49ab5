"""What a publishable key may make a call do: which numbers it rings, what the call carries,
and what its default channel (``web``) answers until web calls arrive."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from relay.calls.media import MEDIA
from relay.config import Settings
from relay.store.models import Call
from tests.api.test_calls import BASE, byot_call, new_agent, new_number
from tests.transports.support import ScriptedEngine


@pytest.fixture
def settings() -> Settings:
    return Settings(**BASE)


async def calls_stored(database) -> int:
    async with database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Call)) or 0)


async def refused(client, headers, body, status, code, field) -> dict[str, Any]:
    resp = await client.post("/v1/calls", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    err = (await resp.json())["error"]
    assert (err["code"], err.get("field")) == (code, field), err
    return err


async def phone_agent(client, auth) -> str:
    agent = await new_agent(client, auth)
    number = await new_number(client, auth, agent["id"])
    assert number["phoneNumber"].startswith("+1")  # a US number of the sim carrier
    return str(agent["id"])


async def test_by_default_a_publishable_key_rings_ordinary_numbers_of_its_own_country(
    client, auth, make_key, database
):
    agent = await phone_agent(client, auth)
    pk = await make_key("proj-a", kind="publishable", channels=["phone"])
    ok = await client.post("/v1/calls", json={"agentId": agent, "to": "+14155550123"}, headers=pk)
    assert ok.status == 202, await ok.text()
    stored = await calls_stored(database)
    for to, words in [
        ("+19005551234", "premium-rate"),  # US premium rate
        ("+15005550006", "premium-rate"),  # US personal (500) number
        ("+14165550123", "numbers in US only"),  # Canada: +1, another country
        ("+18765551234", "numbers in US only"),  # Jamaica: +1 too, a toll-fraud favourite
        ("+447912345678", "numbers in US only"),  # a UK mobile
    ]:
        body = {"agentId": agent, "to": to}
        err = await refused(client, pk, body, 403, "destination_not_allowed", "to")
        assert words in err["message"], (to, err["message"])
    assert await calls_stored(database) == stored
    # A secret key is limited by none of it.
    resp = await client.post(
        "/v1/calls", json={"agentId": agent, "to": "+447912345678"}, headers=auth
    )
    assert resp.status == 202, await resp.text()


async def test_a_publishable_key_with_destinations_rings_only_those(
    client, auth, make_key, database
):
    agent = await phone_agent(client, auth)
    resp = await client.post(
        "/v1/keys",
        json={
            "kind": "publishable",
            "channels": ["phone"],
            "allowedDestinations": ["+1415*", "+19005551234", "+1900*", "+44*"],
        },
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    pk = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    for to in ("+14155550123", "+19005551234", "+447912345678"):  # listed, or by prefix
        resp = await client.post("/v1/calls", json={"agentId": agent, "to": to}, headers=pk)
        assert resp.status == 202, (to, await resp.text())
    stored = await calls_stored(database)
    for to, words in [
        ("+12125550123", "not in the key's allowedDestinations"),  # same country, not listed
        ("+19005551235", "premium-rate"),  # a prefix never lets a premium number through
        ("+449098790000", "premium-rate"),
    ]:
        body = {"agentId": agent, "to": to}
        err = await refused(client, pk, body, 403, "destination_not_allowed", "to")
        assert words in err["message"], (to, err["message"])
    assert await calls_stored(database) == stored


@pytest.mark.parametrize(
    ("extra", "status", "code", "field"),
    [
        ({"variables": {"name": "Ann"}}, 403, "key_scope_violation", "variables"),
        ({"postCall": {"summary": True}}, 403, "key_scope_violation", "postCall"),
        ({"metadata": {"note": "x" * 1100}}, 422, "metadata_too_large", "metadata"),
    ],
)
async def test_a_publishable_key_sends_variables_post_call_and_metadata_only_if_allowed(
    client, auth, make_key, database, extra, status, code, field
):
    agent = await new_agent(client, auth)
    pk = await make_key("proj-a", kind="publishable", channels=["websocket"])
    body = {"agentId": agent["id"], "connectionType": "websocket", **extra}
    err = await refused(client, pk, body, status, code, field)
    assert "create the key with" in err["message"].lower()
    assert await calls_stored(database) == 0
    # Small metadata and empty variables are fine for any key.
    small = await byot_call(client, pk, agent["id"], metadata={"page": "pricing"}, variables={})
    assert small["metadata"] == {"page": "pricing"}
    # A key made to allow it, and a secret key, send the same body.
    resp = await client.post(
        "/v1/keys",
        json={
            "kind": "publishable",
            "channels": ["websocket"],
            "allowVariables": True,
            "allowPostCall": True,
            "maxMetadataBytes": 4096,
        },
        headers=auth,
    )
    allowed = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    for headers in (allowed, auth):
        resp = await client.post("/v1/calls", json=body, headers=headers)
        assert resp.status == 201, await resp.text()


async def test_a_publishable_key_with_no_metadata_allowance_sends_none(client, auth):
    agent = await new_agent(client, auth)
    resp = await client.post(
        "/v1/keys",
        json={"kind": "publishable", "channels": ["websocket"], "maxMetadataBytes": 0},
        headers=auth,
    )
    pk = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    body = {"agentId": agent["id"], "connectionType": "websocket", "metadata": {"a": 1}}
    await refused(client, pk, body, 422, "metadata_too_large", "metadata")
    assert (await byot_call(client, pk, agent["id"], metadata={}))["metadata"] == {}


async def test_the_default_key_makes_web_calls_and_says_so_when_asked_for_a_phone_call(
    client, auth, make_key, database
):
    client.app[MEDIA].engine = ScriptedEngine()  # a web call warms the engine: not here
    agent = await phone_agent(client, auth)
    default = await make_key("proj-a", kind="publishable")  # channels: web
    for headers in (default, auth):
        body = {"agentId": agent, "connectionType": "webrtc"}
        resp = await client.post("/v1/calls", json=body, headers=headers)
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["token"]
    body = {"agentId": agent, "to": "+14155550123"}
    err = await refused(client, default, body, 403, "key_scope_violation", None)
    assert "Its only channel is 'web'" in err["message"]
    assert "'phone' channel" in err["message"]
    assert await calls_stored(database) == 2
