"""``/v1/messages`` and ``/v1/conversations``: sending, listing with filters and cursors,
tenant isolation, and publishable keys refused everywhere."""

from __future__ import annotations

import pytest

from tests.sms.conftest import HANDSET, events_of, make_agent, sim_text, sms_of


async def send(client, auth, **body):
    return await client.post("/v1/messages", json=body, headers=auth)


async def test_send_as_an_agent(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    resp = await send(client, auth, agentId=agent.id, to=HANDSET, text="Your order is ready.")
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["object"] == "message"
    assert (msg["from"], msg["to"], msg["direction"]) == (agent.number, HANDSET, "outbound")
    assert (msg["status"], msg["segments"], msg["encoding"]) == ("delivered", 1, "gsm7")
    assert msg["agentId"] == agent.id and msg["numberId"] == agent.number_id
    assert [t.text for t in sms_of(client).sim.inbox(HANDSET)] == ["Your order is ready."]
    events = await events_of(database)
    assert [e.type for e in events] == ["message.sent", "message.delivered"]
    assert all(e.ordering_key == msg["conversationId"] for e in events)


async def test_send_from_a_number(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    resp = await send(client, auth, **{"from": agent.number, "to": HANDSET, "text": "Hi 👋"})
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["agentId"] == agent.id  # the number's agent
    assert msg["encoding"] == "ucs2"


async def test_reply_to_an_outbound_text_continues_its_conversation(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    sent = await (await send(client, auth, agentId=agent.id, to=HANDSET, text="Table at 8?")).json()
    got = await sim_text(client, auth, agent.number, "Yes please")
    assert got["conversationId"] == sent["conversationId"]
    assert [(h["role"], h["content"]) for h in hook.received[0]["recentHistory"]] == [
        ("agent", "Table at 8?")
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"to": HANDSET, "text": "hi"}, 422, "missing_field", "agentId"),
        ({"agentId": "agt_nope", "to": HANDSET, "text": "hi"}, 404, "not_found", "agentId"),
        ({"from": "+14155550199", "to": HANDSET, "text": "hi"}, 404, "not_found", "from"),
        (
            {"from": "not a number", "to": HANDSET, "text": "hi"},
            422,
            "invalid_phone_number",
            "from",
        ),
        ({"agentId": "AGENT", "to": "12345", "text": "hi"}, 422, "invalid_phone_number", "to"),
        ({"agentId": "AGENT", "to": HANDSET, "text": ""}, 422, "string_too_short", "text"),
        ({"agentId": "AGENT", "to": HANDSET, "text": "x" * 1601}, 422, "string_too_long", "text"),
        ({"agentId": "AGENT", "to": HANDSET, "text": "x", "media": []}, 422, None, "media"),
        ({"agentId": "AGENT", "to": "NUMBER", "text": "hi"}, 422, "validation_error", "to"),
    ],
    ids=[
        "no-sender",
        "unknown-agent",
        "unknown-from",
        "bad-from",
        "bad-to",
        "empty-text",
        "long-text",
        "unknown-field",
        "to-is-from",
    ],
)
async def test_send_errors(client, auth, hook, body, status, code, field):
    agent = await make_agent(client, auth, hook)
    names = {"AGENT": agent.id, "NUMBER": agent.number}
    body = {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    resp = await send(client, auth, **body)
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    if code is not None:
        assert error["code"] == code or error["details"][0]["code"] == code
    assert error["field"] == field


async def test_agent_without_a_number_cannot_send(client, auth):
    resp = await client.post(
        "/v1/agents", json={"name": "x", "webhookUrl": "http://127.0.0.1:9/"}, headers=auth
    )
    agent_id = (await resp.json())["id"]
    resp = await send(client, auth, agentId=agent_id, to=HANDSET, text="hi")
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "agent_has_no_number"


async def test_list_filters_and_pages(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    for i in range(3):
        await sim_text(client, auth, agent.number, f"in {i}")
    await send(client, auth, agentId=agent.id, to="+12025550177", text="out")
    everything = []
    url = "/v1/messages?limit=2"
    while url:
        page = await (await client.get(url, headers=auth)).json()
        assert len(page["data"]) <= 2
        everything += page["data"]
        url = f"/v1/messages?limit=2&cursor={page['nextCursor']}" if page["hasMore"] else None
    assert len(everything) == 7
    ids = [m["id"] for m in everything]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7

    async def texts(query):
        page = await (await client.get(f"/v1/messages?{query}", headers=auth)).json()
        return sorted(m["text"] for m in page["data"])

    assert await texts("direction=inbound") == ["in 0", "in 1", "in 2"]
    assert await texts("to=%2B12025550177") == ["out"]
    assert await texts(f"from={HANDSET.replace('+', '%2B')}") == ["in 0", "in 1", "in 2"]
    assert await texts("status=received") == ["in 0", "in 1", "in 2"]
    conv = everything[-1]["conversationId"]
    assert len(await texts(f"conversationId={conv}")) == 6
    resp = await client.get("/v1/messages?cursor=garbage", headers=auth)
    assert (await resp.json())["error"]["code"] == "invalid_cursor"


async def test_conversations_list_and_detail(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "ok", "state": {"seen": True}}
    a = await sim_text(client, auth, agent.number, "hi", frm="+12025550171")
    b = await sim_text(client, auth, agent.number, "hi", frm="+12025550172")
    page = await (await client.get("/v1/conversations?limit=1", headers=auth)).json()
    assert page["hasMore"] is True and page["data"][0]["id"] == b["conversationId"]
    nxt = await (
        await client.get(f"/v1/conversations?limit=1&cursor={page['nextCursor']}", headers=auth)
    ).json()
    assert [c["id"] for c in nxt["data"]] == [a["conversationId"]] and nxt["hasMore"] is False
    found = await (
        await client.get("/v1/conversations?theirNumber=%2B12025550171", headers=auth)
    ).json()
    [conv] = found["data"]
    assert conv["ourNumber"] == agent.number and conv["theirNumber"] == "+12025550171"
    assert (conv["messageCount"], conv["state"], conv["optedOut"]) == (2, {"seen": True}, False)
    detail = await (await client.get(f"/v1/conversations/{conv['id']}", headers=auth)).json()
    assert [h["content"] for h in detail["recentHistory"]] == ["hi", "ok"]


async def test_other_projects_see_nothing(client, auth, hook, make_key):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "private")
    other = await make_key("proj-b")
    for path in (
        f"/v1/messages/{got['messageId']}",
        f"/v1/conversations/{got['conversationId']}",
    ):
        assert (await client.get(path, headers=other)).status == 404
    for path in ("/v1/messages", "/v1/conversations"):
        assert (await (await client.get(path, headers=other)).json())["data"] == []
    resp = await send(client, other, **{"from": agent.number, "to": HANDSET, "text": "hi"})
    assert resp.status == 404


@pytest.mark.parametrize("channels", [["web"], ["sms"]])
async def test_publishable_keys_are_refused(client, auth, hook, make_key, channels):
    agent = await make_agent(client, auth, hook)
    got = await sim_text(client, auth, agent.number, "hi")
    pk = await make_key("proj-a", kind="publishable", channels=channels)
    requests = [
        ("POST", "/v1/messages", {"agentId": agent.id, "to": HANDSET, "text": "hi"}),
        ("GET", "/v1/messages", None),
        ("GET", f"/v1/messages/{got['messageId']}", None),
        ("GET", "/v1/conversations", None),
        ("GET", f"/v1/conversations/{got['conversationId']}", None),
        ("POST", "/carriers/sim/sms", {"to": agent.number, "text": "hi"}),
    ]
    for method, path, body in requests:
        resp = await client.request(method, path, json=body, headers=pk)
        assert resp.status == 403, (method, path)
        assert (await resp.json())["error"]["code"] == "publishable_key_not_allowed"
    assert len(hook.received) == 1


async def test_openapi_documents_the_sms_endpoints(client):
    doc = await (await client.get("/openapi.json")).json()
    for path in (
        "/v1/messages",
        "/v1/messages/{message_id}",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/carriers/sim/sms",
    ):
        assert path in doc["paths"], path
    schema = doc["components"]["schemas"]["MessageCreate"]
    assert {"from", "to", "text", "agentId"} <= set(schema["properties"])
