"""An agent's ``tools``: stored, shown, validated; snapshotted into each call."""

from __future__ import annotations

import pytest

from relay.config import Settings

LOOKUP = {
    "name": "lookup_order",
    "description": "Find an order",
    "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}}},
    "url": "http://127.0.0.1:9/tools/lookup",
    "timeoutMs": 3000,
}
HOSTED = {"name": "Ava", "voiceMode": "hosted", "systemPrompt": "You are Ava."}


async def test_tools_are_stored_and_shown_in_camel_case(client, auth):
    tools = [
        LOOKUP,
        {"name": "end_call"},
        {"name": "transfer_call", "destinations": ["+61255501999"]},
    ]
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": tools}, headers=auth)
    assert resp.status == 201, await resp.text()
    agent_id = (await resp.json())["id"]
    body = await (await client.get(f"/v1/agents/{agent_id}", headers=auth)).json()
    assert body["tools"][0] == {**LOOKUP, "destinations": None}
    assert body["tools"][1] == {
        "name": "end_call",
        "description": None,
        "parameters": None,
        "url": None,
        "timeoutMs": 5000,
        "destinations": None,
    }
    assert body["tools"][2]["destinations"] == ["+61255501999"]


async def test_an_agent_without_tools_shows_null(client, auth):
    body = await (await client.post("/v1/agents", json=HOSTED, headers=auth)).json()
    assert body["tools"] is None


async def test_patch_replaces_and_null_clears_tools(client, auth):
    agent = await (
        await client.post("/v1/agents", json={**HOSTED, "tools": [LOOKUP]}, headers=auth)
    ).json()
    url = f"/v1/agents/{agent['id']}"
    resp = await client.patch(url, json={"tools": [{"name": "end_call"}]}, headers=auth)
    assert [t["name"] for t in (await resp.json())["tools"]] == ["end_call"]
    resp = await client.patch(url, json={"tools": None}, headers=auth)
    assert (await resp.json())["tools"] is None


@pytest.mark.parametrize(
    ("tool", "field", "words"),
    [
        ({"name": "lookup"}, "tools.0", "needs a url"),
        ({"name": "bad name!", "url": "http://127.0.0.1:9/x"}, "tools.0.name", "pattern"),
        ({**LOOKUP, "parameters": {"type": "string"}}, "tools.0.parameters", "type 'object'"),
        (
            {**LOOKUP, "parameters": {"type": "object", "properties": {"a": {"type": 5}}}},
            "tools.0.parameters",
            "not a valid JSON schema",
        ),
        ({**LOOKUP, "timeoutMs": 10}, "tools.0.timeoutMs", "greater than or equal"),
        ({**LOOKUP, "url": "ftp://x"}, "tools.0.url", "URL"),
        ({"name": "end_call", "destinations": ["+61255501999"]}, "tools.0", "transfer_call only"),
    ],
)
async def test_invalid_tools_are_refused_with_the_field(client, auth, tool, field, words):
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": [tool]}, headers=auth)
    assert resp.status == 422
    details = (await resp.json())["error"]["details"]
    assert any(d["field"] == field and words in d["message"] for d in details), details


async def test_tool_names_must_be_unique(client, auth):
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": [LOOKUP, LOOKUP]}, headers=auth)
    assert resp.status == 422
    assert "unique" in (await resp.json())["error"]["details"][0]["message"]


async def test_a_private_tool_url_is_refused_like_a_webhook_url(app_client, raw_key):
    client = await app_client(Settings(allow_private_webhooks=False))
    auth = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
    resp = await client.post("/v1/agents", json={**HOSTED, "tools": [LOOKUP]}, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["field"] == "tools.0.url" and err["code"] == "invalid_webhook_url"
