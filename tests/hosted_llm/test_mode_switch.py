"""Switching an agent's voiceMode by PATCH: calls keep the mode they started with, new calls
take the new one, and every call record says which mode it runs in."""

from __future__ import annotations


async def open_call(client, auth, agent_id: str) -> dict:
    resp = await client.post(
        "/v1/calls", json={"agentId": agent_id, "connectionType": "websocket"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_patching_the_mode_changes_new_calls_only(client, auth):
    agent = await (
        await client.post(
            "/v1/agents",
            json={"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"},
            headers=auth,
        )
    ).json()
    url = f"/v1/agents/{agent['id']}"
    before = await open_call(client, auth, agent["id"])

    resp = await client.patch(
        url,
        json={
            "voiceMode": "hosted",
            "systemPrompt": "You are Ava.",
            "tools": [{"name": "end_call"}],
        },
        headers=auth,
    )
    assert resp.status == 200 and (await resp.json())["voiceMode"] == "hosted"
    during = await open_call(client, auth, agent["id"])

    resp = await client.patch(url, json={"voiceMode": "webhook"}, headers=auth)
    assert resp.status == 200
    after = await open_call(client, auth, agent["id"])

    assert [c["voiceMode"] for c in (before, during, after)] == ["webhook", "hosted", "webhook"]
    details = [
        await (await client.get(f"/v1/calls/{c['id']}", headers=auth)).json()
        for c in (before, during, after)
    ]
    assert [d["voiceMode"] for d in details] == ["webhook", "hosted", "webhook"]
    frozen = [d["agent"] for d in details]
    assert frozen[0]["voiceMode"] == "webhook" and frozen[0]["systemPrompt"] is None
    assert frozen[1]["voiceMode"] == "hosted" and frozen[1]["systemPrompt"] == "You are Ava."
    assert frozen[1]["tools"][0]["name"] == "end_call"
    # the prompt stays on the agent after switching back; only the mode changed
    assert frozen[2]["voiceMode"] == "webhook" and frozen[2]["systemPrompt"] == "You are Ava."


async def test_switching_to_hosted_without_a_prompt_is_refused_and_nothing_changes(client, auth):
    agent = await (
        await client.post(
            "/v1/agents",
            json={"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"},
            headers=auth,
        )
    ).json()
    resp = await client.patch(
        f"/v1/agents/{agent['id']}", json={"voiceMode": "hosted"}, headers=auth
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "systemPrompt"
    call = await open_call(client, auth, agent["id"])
    assert call["voiceMode"] == "webhook"
