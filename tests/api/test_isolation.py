"""Tenant isolation: one project's key never sees, changes or binds another project's objects."""

from __future__ import annotations

import pytest

from relay.store.models import Agent

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}


@pytest.fixture
async def a(client, make_key):
    """Project A: a key, an agent and a number bound to it."""
    headers = await make_key("proj-a")
    agent = await (await client.post("/v1/agents", json=AGENT, headers=headers)).json()
    number = await (
        await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=headers)
    ).json()
    assert number["agentId"] == agent["id"]
    return {"headers": headers, "agent": agent, "number": number}


@pytest.fixture
async def b(make_key):
    return await make_key("proj-b")


async def assert_not_found(resp, field: str | None = None) -> None:
    assert resp.status == 404, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "not_found"
    assert err["message"]
    if field is not None:
        assert err["field"] == field


async def assert_a_untouched(client, a, database) -> None:
    agent = await (await client.get(f"/v1/agents/{a['agent']['id']}", headers=a["headers"])).json()
    assert agent["name"] == "Ava"
    assert agent["numberIds"] == [a["number"]["id"]]
    number = await (
        await client.get(f"/v1/numbers/{a['number']['id']}", headers=a["headers"])
    ).json()
    assert number["agentId"] == a["agent"]["id"]
    async with database.session() as session:
        row = await session.get(Agent, a["agent"]["id"])
        assert row.webhook_secret == a["agent"]["webhookSecret"]
        assert row.deleted_at is None


async def test_other_project_cannot_reach_an_agent(client, a, b, database):
    url = f"/v1/agents/{a['agent']['id']}"
    await assert_not_found(await client.get(url, headers=b))
    await assert_not_found(await client.patch(url, json={"name": "Mallory"}, headers=b))
    await assert_not_found(await client.delete(url, headers=b))
    await assert_not_found(
        await client.post(f"{url}/rotate-webhook-secret", json={"graceSeconds": 0}, headers=b)
    )
    await assert_a_untouched(client, a, database)


async def test_other_project_cannot_reach_a_number(client, a, b, database):
    url = f"/v1/numbers/{a['number']['id']}"
    await assert_not_found(await client.get(url, headers=b))
    await assert_not_found(await client.patch(url, json={"agentId": None}, headers=b))
    await assert_not_found(await client.delete(url, headers=b))
    await assert_a_untouched(client, a, database)


async def test_other_project_cannot_bind_an_agent_to_its_own_number(client, a, b, database):
    mine = await (await client.post("/v1/numbers", json={}, headers=b)).json()
    resp = await client.patch(
        f"/v1/numbers/{mine['id']}", json={"agentId": a["agent"]["id"]}, headers=b
    )
    await assert_not_found(resp, field="agentId")
    got = await (await client.get(f"/v1/numbers/{mine['id']}", headers=b)).json()
    assert got["agentId"] is None
    await assert_a_untouched(client, a, database)


async def test_other_project_cannot_provision_or_import_onto_an_agent(client, a, b, database):
    resp = await client.post("/v1/numbers", json={"agentId": a["agent"]["id"]}, headers=b)
    await assert_not_found(resp, field="agentId")
    imported = {
        "provider": "twilio",
        "phoneNumber": "+14155550123",
        "credentialsRef": "main",
        "agentId": a["agent"]["id"],
    }
    resp = await client.post("/v1/numbers/import", json=imported, headers=b)
    await assert_not_found(resp, field="agentId")

    # Nothing was created for B, and the refused import did not reserve the phone number.
    assert (await (await client.get("/v1/numbers", headers=b)).json())["data"] == []
    del imported["agentId"]
    assert (await client.post("/v1/numbers/import", json=imported, headers=b)).status == 201
    await assert_a_untouched(client, a, database)


async def test_lists_show_only_the_callers_project(client, a, b):
    b_agent = await (await client.post("/v1/agents", json=AGENT, headers=b)).json()
    b_number = await (await client.post("/v1/numbers", json={}, headers=b)).json()

    agents = (await (await client.get("/v1/agents", headers=b)).json())["data"]
    assert [x["id"] for x in agents] == [b_agent["id"]]
    numbers = (await (await client.get("/v1/numbers", headers=b)).json())["data"]
    assert [x["id"] for x in numbers] == [b_number["id"]]
    filtered = await client.get("/v1/numbers", params={"agentId": a["agent"]["id"]}, headers=b)
    assert filtered.status == 200
    assert (await filtered.json())["data"] == []

    agents = (await (await client.get("/v1/agents", headers=a["headers"])).json())["data"]
    assert [x["id"] for x in agents] == [a["agent"]["id"]]
    numbers = (await (await client.get("/v1/numbers", headers=a["headers"])).json())["data"]
    assert [x["id"] for x in numbers] == [a["number"]["id"]]
