from __future__ import annotations

import pytest

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}


async def test_create_returns_secret_and_defaults(client, auth):
    resp = await client.post("/v1/agents", json=AGENT, headers=auth)
    assert resp.status == 201
    body = await resp.json()
    assert body["id"].startswith("agt_")
    assert body["webhookSecret"].startswith("whsec_")
    assert body["voiceMode"] == "webhook"
    assert body["webhookTimeoutMs"] == 30000
    assert body["maxDurationSeconds"] == 3000
    assert body["firstSpeaker"] == "agent"
    assert body["numberIds"] == []


async def test_get_hides_secret(client, auth):
    created = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    resp = await client.get(f"/v1/agents/{created['id']}", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert "webhookSecret" not in body
    assert body["name"] == "Ava"


async def test_webhook_mode_requires_url(client, auth):
    resp = await client.post("/v1/agents", json={"name": "x"}, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["field"] == "webhookUrl"
    assert err["code"] == "missing_field"


async def test_hosted_mode_requires_system_prompt(client, auth):
    resp = await client.post("/v1/agents", json={"name": "x", "voiceMode": "hosted"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "systemPrompt"


async def test_validation_names_every_offending_field(client, auth):
    bad = {
        "name": "",
        "webhookUrl": "ftp://x",
        "webhookTimeoutMs": 10,
        "temperature": 2,
        "maxDurationSeconds": 10,
        "inactivityTimeoutSeconds": 5,
        "firstSpeaker": "robot",
        "bogusField": 1,
    }
    resp = await client.post("/v1/agents", json=bad, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    fields = {d["field"] for d in err["details"]}
    assert fields == {
        "name",
        "webhookUrl",
        "webhookTimeoutMs",
        "temperature",
        "maxDurationSeconds",
        "inactivityTimeoutSeconds",
        "firstSpeaker",
        "bogusField",
    }


async def test_patch_updates_only_given_fields_and_switches_mode(client, auth):
    agent = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    resp = await client.patch(f"/v1/agents/{agent['id']}", json={"greeting": "Hello"}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["greeting"] == "Hello"

    resp = await client.patch(
        f"/v1/agents/{agent['id']}", json={"voiceMode": "hosted"}, headers=auth
    )
    assert resp.status == 422  # hosted needs a systemPrompt
    resp = await client.patch(
        f"/v1/agents/{agent['id']}",
        json={"voiceMode": "hosted", "systemPrompt": "You are Ava."},
        headers=auth,
    )
    body = await resp.json()
    assert resp.status == 200
    assert body["voiceMode"] == "hosted"
    assert body["greeting"] == "Hello"
    assert body["webhookUrl"] == AGENT["webhookUrl"]

    resp = await client.patch(f"/v1/agents/{agent['id']}", json={"greeting": None}, headers=auth)
    assert (await resp.json())["greeting"] is None


async def test_mode_switch_keeps_numbers_bound(client, auth):
    agent = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    number = await (
        await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
    ).json()
    await client.patch(
        f"/v1/agents/{agent['id']}",
        json={"voiceMode": "hosted", "systemPrompt": "Be brief."},
        headers=auth,
    )
    got = await (await client.get(f"/v1/numbers/{number['id']}", headers=auth)).json()
    assert got["agentId"] == agent["id"]
    again = await (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).json()
    assert again["numberIds"] == [number["id"]]


async def test_delete_unbinds_numbers_and_hides_agent(client, auth):
    agent = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    number = await (
        await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
    ).json()
    resp = await client.delete(f"/v1/agents/{agent['id']}", headers=auth)
    assert resp.status == 200
    assert (await resp.json()) == {"id": agent["id"], "object": "agent", "deleted": True}
    assert (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).status == 404
    got = await (await client.get(f"/v1/numbers/{number['id']}", headers=auth)).json()
    assert got["agentId"] is None


async def test_rotate_secret_returns_new_and_keeps_old_for_grace(client, auth, database):
    from relay.store.models import Agent

    agent = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    resp = await client.post(
        f"/v1/agents/{agent['id']}/rotate-webhook-secret", json={"graceSeconds": 3600}, headers=auth
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["webhookSecret"].startswith("whsec_")
    assert body["webhookSecret"] != agent["webhookSecret"]
    assert body["previousSecretExpiresAt"] is not None
    async with database.session() as session:
        row = await session.get(Agent, agent["id"])
        assert row.previous_webhook_secret == agent["webhookSecret"]


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/x",
        "http://10.0.0.5/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "http://192.168.1.1/",
    ],
)
async def test_private_webhook_urls_refused_by_default(database, aiohttp_client, url):
    from relay.app import create_app
    from relay.auth import create_key
    from relay.config import Settings

    client = await aiohttp_client(create_app(Settings(), db=database))
    async with database.session() as session:
        raw, _ = await create_key(session, "p")
    resp = await client.post(
        "/v1/agents", json={"name": "x", "webhookUrl": url}, headers={"X-API-Key": raw}
    )
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_webhook_url"
    assert err["field"] == "webhookUrl"


async def test_public_webhook_url_accepted_by_default(database, aiohttp_client):
    from relay.app import create_app
    from relay.auth import create_key
    from relay.config import Settings

    client = await aiohttp_client(create_app(Settings(), db=database))
    async with database.session() as session:
        raw, _ = await create_key(session, "p")
    resp = await client.post(
        "/v1/agents",
        json={"name": "x", "webhookUrl": "https://example.com/h"},
        headers={"X-API-Key": raw},
    )
    assert resp.status == 201


async def test_pagination_walks_every_agent_once_newest_first(client, auth):
    ids = []
    for i in range(7):
        ids.append(
            (
                await (
                    await client.post("/v1/agents", json={**AGENT, "name": f"a{i}"}, headers=auth)
                ).json()
            )["id"]
        )
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/v1/agents", params=params, headers=auth)).json()
        pages += 1
        seen += [a["id"] for a in page["data"]]
        if not page["hasMore"]:
            assert page["nextCursor"] is None
            break
        cursor = page["nextCursor"]
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_bad_cursor_and_limit_are_422(client, auth):
    resp = await client.get("/v1/agents", params={"cursor": "!!!"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "cursor"
    resp = await client.get("/v1/agents", params={"limit": "500"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "limit"


async def test_turn_taking_settings_are_kept_and_validated(client, auth):
    created = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    assert created["interruptionSensitivity"] == "medium"
    assert created["backchannelWords"] is None
    assert created["unfinishedTurnMs"] == 700
    assert created["speculativeTurns"] is False
    patch = {
        "interruptionSensitivity": "low",
        "backchannelWords": {"en": ["righto", "mhm"]},
        "speculativeTurns": True,
    }
    resp = await client.patch(f"/v1/agents/{created['id']}", json=patch, headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["interruptionSensitivity"] == "low"
    assert body["backchannelWords"] == {"en": ["righto", "mhm"]}
    assert body["speculativeTurns"] is True
    bad = {
        "interruptionSensitivity": "deaf",
        "backchannelWords": {"English!": [""]},
        "unfinishedTurnMs": 99999,
        "speculativeTurns": "sometimes",
    }
    resp = await client.patch(f"/v1/agents/{created['id']}", json=bad, headers=auth)
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert {"interruptionSensitivity", "unfinishedTurnMs", "speculativeTurns"} <= fields
    assert any(f.startswith("backchannelWords") for f in fields), fields
    got = await (await client.get(f"/v1/agents/{created['id']}", headers=auth)).json()
    assert got["interruptionSensitivity"] == "low"
