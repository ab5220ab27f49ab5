"""examples/hosted_agent.py: its PATCH is accepted, and its tool answers signed calls."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from aiohttp import web

from examples.hosted_agent import SECRET, hosted_settings, lookup_order
from relay.signing import signature_headers

REPO = Path(__file__).resolve().parents[2]
TOOL_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_the_example_switches_an_agent_to_hosted(client, auth):
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "Ava", "webhookUrl": "http://127.0.0.1:9/h"}, headers=auth
        )
    ).json()
    resp = await client.patch(
        f"/v1/agents/{agent['id']}",
        json=hosted_settings("http://127.0.0.1:8091/tools/lookup_order"),
        headers=auth,
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["voiceMode"] == "hosted"
    assert [t["name"] for t in body["tools"]] == ["lookup_order", "end_call"]
    assert body["postCall"]["sentiment"] is True


async def test_the_example_tool_answers_only_signed_calls(aiohttp_client):
    app = web.Application()
    app[SECRET] = TOOL_SECRET
    app.router.add_post("/tool", lookup_order)
    client = await aiohttp_client(app)
    event = json.dumps({"event": "tool.call", "data": {"arguments": {"orderId": "a-17"}}})
    headers = {"Content-Type": "application/json", **signature_headers(event, [TOOL_SECRET])}
    resp = await client.post("/tool", data=event, headers=headers)
    assert (await resp.json())["result"]["status"].startswith("shipped")
    forged = {**headers, "webhook-signature": "v1,AAAA"}
    assert (await client.post("/tool", data=event, headers=forged)).status == 401


async def test_the_curl_example_switches_an_agent_to_hosted_with_its_tools(client, auth):
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "Ava", "webhookUrl": "http://127.0.0.1:9/h"}, headers=auth
        )
    ).json()
    env = {
        "PATH": os.environ["PATH"],
        "BASE": str(client.make_url("")).rstrip("/"),
        "RELAY_KEY": auth["Authorization"].removeprefix("Bearer "),
        "AGENT_ID": agent["id"],
        "TOOL_URL": "http://127.0.0.1:8091/tools/lookup_order",
    }
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "examples/hosted_agent.sh"), env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    assert json.loads(out)["voiceMode"] == "hosted"
    body = await (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).json()
    assert body["voiceMode"] == "hosted" and "{{call.from}}" in body["systemPrompt"]
    assert [t["name"] for t in body["tools"]] == ["lookup_order", "end_call"]
    assert body["tools"][0]["url"] == env["TOOL_URL"]
