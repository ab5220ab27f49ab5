"""Where an agent's calls may be transferred, through the API: ``transferDestinations`` (the
webhook's ``transfer``) and the built-in ``transfer_call``'s ``destinations`` (hosted mode),
on agents and on inline calls. Every destination is checked (relay.transfer) before anything
is stored."""

from __future__ import annotations

import pytest

from relay.store.models import Agent, Call
from relay.transfer import PREMIUM_RATE, SIP_NOT_PUBLIC

WEBHOOK = {"name": "Ava", "webhookUrl": "https://example.com/hook"}
HOSTED = {"name": "Ava", "voiceMode": "hosted", "systemPrompt": "You are Ava."}


async def test_transfer_destinations_are_stored_normalised_and_shown(client, auth, database):
    given = ["+61 2 5550 9999", "SIP:Desk@PBX.Example.com;transport=TLS"]
    resp = await client.post(
        "/v1/agents", json={**WEBHOOK, "transferDestinations": given}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    stored = ["+61255509999", "sip:Desk@pbx.example.com;transport=tls"]
    assert agent["transferDestinations"] == stored
    async with database.session() as session:
        row = await session.get(Agent, agent["id"])
    assert row.config["transfer_destinations"] == stored
    url = f"/v1/agents/{agent['id']}"
    resp = await client.patch(url, json={"transferDestinations": None}, headers=auth)
    assert (await resp.json())["transferDestinations"] is None


async def test_an_agent_without_transfer_destinations_shows_null(client, auth):
    agent = await (await client.post("/v1/agents", json=WEBHOOK, headers=auth)).json()
    assert agent["transferDestinations"] is None


@pytest.mark.parametrize(
    ("destination", "words"),
    [
        ("4155550123", "E.164"),
        ("+19005550000", PREMIUM_RATE),
        ("sip:admin@127.0.0.1", SIP_NOT_PUBLIC),
        ("sip:admin@169.254.169.254", SIP_NOT_PUBLIC),
        ("sip:pbx.internal", "sip:user@host"),
        ("sip:a@example.com\r\nX-Evil: 1", "control characters"),
        ("+1" + "5" * 300, "at most 256"),
    ],
)
async def test_an_invalid_transfer_destination_is_refused_with_the_field(
    client, auth, destination, words
):
    body = {**WEBHOOK, "transferDestinations": ["+61255509999", destination]}
    resp = await client.post("/v1/agents", json=body, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == (
        "invalid_transfer_destination",
        "transferDestinations.1",
    )
    assert words in error["details"][0]["message"]
    listed = await (await client.get("/v1/agents", headers=auth)).json()
    assert listed["data"] == []  # nothing stored


@pytest.mark.parametrize(
    "tool", [{"name": "transfer_call"}, {"name": "transfer_call", "destinations": []}]
)
async def test_transfer_call_without_destinations_is_refused(client, auth, tool):
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": [tool]}, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("transfer_destinations_required", "tools.0")


async def test_patching_in_transfer_call_without_destinations_is_refused(client, auth):
    agent = await (await client.post("/v1/agents", json=HOSTED, headers=auth)).json()
    url = f"/v1/agents/{agent['id']}"
    resp = await client.patch(url, json={"tools": [{"name": "transfer_call"}]}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "transfer_destinations_required"
    shown = await (await client.get(url, headers=auth)).json()
    assert shown["tools"] is None


async def test_an_agent_stored_before_destinations_were_required_can_still_be_patched(
    client, auth, database
):
    tools = [{"name": "transfer_call", "destinations": ["+61255501999"]}]
    agent = await (
        await client.post("/v1/agents", json={**HOSTED, "tools": tools}, headers=auth)
    ).json()
    async with database.session() as session:  # as an agent stored before this release
        row = await session.get(Agent, agent["id"])
        row.config = {**row.config, "tools": [{"name": "transfer_call"}]}
    url = f"/v1/agents/{agent['id']}"
    resp = await client.patch(url, json={"greeting": "Hello."}, headers=auth)
    assert resp.status == 200, await resp.text()  # its transfers are refused at run time
    assert (await resp.json())["tools"][0]["destinations"] is None


async def test_transfer_call_destinations_are_checked_and_normalised(client, auth):
    tools = [{"name": "transfer_call", "destinations": ["+61 2 5550 1999", "sip:a@10.0.0.8"]}]
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": tools}, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == (
        "invalid_transfer_destination",
        "tools.0.destinations.1",
    )
    tools[0]["destinations"].pop()
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": tools}, headers=auth)
    assert (await resp.json())["tools"][0]["destinations"] == ["+61255501999"]


async def test_an_inline_call_takes_checked_transfer_destinations(client, auth, database):
    body = {
        "webhookUrl": "https://example.com/hook",
        "connectionType": "websocket",
        "transferDestinations": ["+61 2 5550 9999"],
    }
    resp = await client.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    async with database.session() as session:
        row = await session.get(Call, call_id)
    assert row.agent_snapshot["transfer_destinations"] == ["+61255509999"]
    detail = await (await client.get(f"/v1/calls/{call_id}", headers=auth)).json()
    assert detail["agent"]["transferDestinations"] == ["+61255509999"]

    body["transferDestinations"] = ["+19005550000"]
    resp = await client.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == (
        "invalid_transfer_destination",
        "transferDestinations.0",
    )


async def test_openapi_documents_transfer_destinations(client):
    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for name in ("AgentCreate", "AgentUpdate", "InlineCallCreate"):
        field = schemas[name]["properties"]["transferDestinations"]
        items = next(s for s in field["anyOf"] if s.get("type") == "array")
        assert items["maxItems"] == 20 and items["items"]["maxLength"] == 256
    assert "transferDestinations" in schemas["AgentOut"]["properties"]
