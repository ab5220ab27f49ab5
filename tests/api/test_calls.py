"""``/v1/calls``: outbound and BYOT calls, inline calls, reads, end, the state machine,
publishable keys, project isolation and restart recovery."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from relay import tokens
from relay.app import create_app
from relay.calls.lifecycle import STATUSES, TRANSITIONS, IllegalTransition, transition
from relay.calls.recovery import hold_call, lock_call
from relay.config import Settings
from relay.ids import new_id
from relay.state import APP_STATE
from relay.store.models import (
    Call,
    CallEvent,
    CallLease,
    LifecycleEvent,
    Number,
    RelayNode,
    TranscriptSegment,
    TurnMetrics,
    utcnow,
)
from tests.conftest import deployment_twilio

BASE: dict[str, Any] = {
    "allow_private_webhooks": True,
    "rate_limit_per_second": 1000,
    "rate_limit_burst": 1000,
    "outbound_ring_timeout_seconds": 0.5,
    "public_url": "https://relay.example.com",
    "node_id": "test-node",
}
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def settings(twilio_rest) -> Settings:
    return Settings(**BASE, **deployment_twilio(twilio_rest[1]))


@pytest.fixture
async def client(database, aiohttp_client, settings):
    # database before aiohttp_client: the app (dialler, delivery worker) stops first.
    return await aiohttp_client(create_app(settings, db=database))


async def new_agent(client, auth, **fields) -> dict[str, Any]:
    resp = await client.post(
        "/v1/agents", json={"name": "Ava", "webhookUrl": HOOK, **fields}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def new_number(client, auth, agent_id=None) -> dict[str, Any]:
    body = {"agentId": agent_id} if agent_id else {}
    resp = await client.post("/v1/numbers", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def phone_call(client, auth, agent_id, to="+14155550123", **fields) -> dict[str, Any]:
    resp = await client.post(
        "/v1/calls", json={"agentId": agent_id, "to": to, **fields}, headers=auth
    )
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def byot_call(client, auth, agent_id, connection="websocket", **fields) -> dict[str, Any]:
    resp = await client.post(
        "/v1/calls",
        json={"agentId": agent_id, "connectionType": connection, **fields},
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def get_call(client, auth, call_id) -> dict[str, Any]:
    resp = await client.get(f"/v1/calls/{call_id}", headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait_status(client, auth, call_id, status, within=5.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        call = await get_call(client, auth, call_id)
        if call["status"] == status:
            return call
        assert time.monotonic() < deadline, call
        await asyncio.sleep(0.02)


async def move(database, call_id, *statuses, reason=None) -> None:
    """Drive a call through the state machine, one transaction per step."""
    for status in statuses:
        async with database.session() as session:
            call = await lock_call(session, call_id)
            await transition(session, call, status, reason=reason if status == "failed" else None)


def lifecycle_messages(detail) -> list[str]:
    return [e["message"] for e in detail["events"] if e["source"] == "lifecycle"]


# --- outbound phone calls ---------------------------------------------------------------------


async def test_outbound_call_is_queued_then_rings_and_fails_unanswered(client, auth, database):
    agent = await new_agent(client, auth)
    number = await new_number(client, auth, agent["id"])
    call = await phone_call(client, auth, agent["id"], metadata={"crm": 7})
    assert call["status"] == "queued"
    assert call["direction"] == "outbound"
    assert call["connectionType"] == "sim"
    assert call["from"] == number["phoneNumber"]
    assert call["numberId"] == number["id"]
    assert call["to"] == "+14155550123"
    assert call["metadata"] == {"crm": 7}
    assert call["joinUrl"] is None

    done = await wait_status(client, auth, call["id"], "failed")
    assert done["failureReason"] == "no_answer"
    assert done["endedAt"] is not None
    assert lifecycle_messages(done) == [
        "status -> queued",
        "status -> connecting",
        "status -> ringing",
        "status -> failed (no_answer)",
    ]
    telephony = [e for e in done["events"] if e["source"] == "telephony"]
    assert telephony[0]["message"] == "Nobody answered within 0.5 s."
    async with database.session() as session:
        types = (
            (
                await session.execute(
                    select(LifecycleEvent.type)
                    .where(LifecycleEvent.ordering_key == call["id"])
                    .order_by(LifecycleEvent.created_at)
                )
            )
            .scalars()
            .all()
        )
        assert await session.get(CallLease, call["id"]) is None
    assert types == ["call.queued", "call.connecting", "call.ringing", "call.failed"]


async def test_outbound_numbers_are_validated_as_e164(client, auth):
    agent = await new_agent(client, auth)
    await new_number(client, auth, agent["id"])
    for body, field in (
        ({"to": "not a number"}, "to"),
        ({"to": "+1415"}, "to"),
        ({"to": "+14155550123", "from": "12"}, "from"),
    ):
        resp = await client.post("/v1/calls", json={"agentId": agent["id"], **body}, headers=auth)
        assert resp.status == 422, body
        err = (await resp.json())["error"]
        assert (err["code"], err["field"]) == ("invalid_phone_number", field)
    # National format with a + prefix normalises to E.164.
    call = await phone_call(client, auth, agent["id"], to="+1 (415) 555-0123")
    assert call["to"] == "+14155550123"


async def test_from_defaults_to_the_agents_first_number_and_must_be_ours(client, auth, make_key):
    agent = await new_agent(client, auth)
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "to": "+14155550123"}, headers=auth
    )
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert (err["code"], err["field"]) == ("agent_has_no_number", "from")

    first = await new_number(client, auth, agent["id"])
    second = await new_number(client, auth, agent["id"])
    assert (await phone_call(client, auth, agent["id"]))["from"] == first["phoneNumber"]
    chosen = await phone_call(client, auth, agent["id"], **{"from": second["phoneNumber"]})
    assert chosen["numberId"] == second["id"]

    other = await make_key("proj-b")
    theirs = await new_number(client, other)
    resp = await client.post(
        "/v1/calls",
        json={"agentId": agent["id"], "to": "+14155550123", "from": theirs["phoneNumber"]},
        headers=auth,
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "unknown_number"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, None),
        ({"to": "+14155550123", "connectionType": "websocket"}, None),
        ({"connectionType": "websocket", "from": "+14155550123"}, None),
        ({"connectionType": "twilio", "sampleRate": 16000}, None),
        ({"connectionType": "sip"}, "connectionType"),
        ({"connectionType": "websocket", "sampleRate": 11025}, "sampleRate"),
        ({"to": "+14155550123", "metadata": {str(i): i for i in range(51)}}, "metadata"),
        ({"to": "+14155550123", "variables": {"a": {"nested": 1}}}, "variables.a"),
        ({"to": "+14155550123", "bogus": 1}, "bogus"),
    ],
)
async def test_create_refuses_bad_bodies(client, auth, body, field):
    agent = await new_agent(client, auth)
    resp = await client.post("/v1/calls", json={"agentId": agent["id"], **body}, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    if field is not None:
        assert any(d["field"].startswith(field) for d in err["details"] if d["field"]), err


async def test_unknown_agent_is_404(client, auth):
    resp = await client.post(
        "/v1/calls", json={"agentId": "agt_nope", "to": "+14155550123"}, headers=auth
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["field"] == "agentId"


# --- BYOT and inline ---------------------------------------------------------------------------


def media_sockets(app) -> set[str]:
    return {
        r.canonical.removeprefix("/media/")
        for r in app.router.resources()
        if r.canonical.startswith("/media/")
    }


@pytest.mark.parametrize("connection", ["twilio", "telnyx", "plivo", "websocket"])
async def test_byot_call_answers_201_with_a_signed_join_url(client, auth, connection):
    agent = await new_agent(client, auth)
    assert {"twilio", "websocket"} <= media_sockets(client.app)
    if connection not in media_sockets(client.app):
        resp = await client.post(
            "/v1/calls",
            json={"agentId": agent["id"], "connectionType": connection},
            headers=auth,
        )
        assert resp.status == 422
        err = (await resp.json())["error"]
        assert (err["code"], err["field"]) == ("connection_type_unavailable", "connectionType")
        assert "twilio" in err["message"]
        return
    call = await byot_call(client, auth, agent["id"], connection)
    assert call["connectionType"] == connection
    assert call["status"] == "connecting"
    assert call["direction"] == "inbound"
    prefix = f"wss://relay.example.com/media/{connection}?token="
    assert call["joinUrl"].startswith(prefix)
    token = call["joinUrl"][len(prefix) :]
    key = client.app[APP_STATE].signing_key
    assert tokens.verify(key, token, "media") == call["id"]
    expires = datetime.fromisoformat(call["joinUrlExpiresAt"])
    assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=60)
    async with client.app[APP_STATE].db.session() as session:
        row = await session.get(Call, call["id"])
    rate = 16000 if connection == "websocket" else 8000
    assert row.agent_snapshot["transport"] == {"sample_rate": rate}


async def test_websocket_call_takes_a_sample_rate(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"], sampleRate=24000)
    async with database.session() as session:
        row = await session.get(Call, call["id"])
    assert row.agent_snapshot["transport"] == {"sample_rate": 24000}


async def test_inline_webhook_call_carries_the_whole_config(client, auth, database):
    body = {
        "systemPrompt": "You book tables for {{variables.venue}}.",
        "voice": "espeak-en-gb",
        "language": "en-GB",
        "greeting": "Hi {{variables.name}}, {{variables.unknown}} here.",
        "model": "gpt-x",
        "temperature": 0.4,
        "firstSpeaker": "user",
        "interruptible": True,
        "maxDuration": 600,
        "inactivityTimeout": 20,
        "inactivityAction": "hangup",
        "recordingEnabled": True,
        "speculativeTurns": True,
        "connectionType": "websocket",
        "webhookUrl": HOOK,
        "variables": {"venue": "Luigi's", "name": "Sam"},
        "metadata": {"source": "test"},
    }
    resp = await client.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    call = await resp.json()
    assert call["agentId"] is None
    assert call["voiceMode"] == "webhook"
    assert call["webhookSecret"].startswith("whsec_")
    assert call["joinUrl"].startswith("wss://relay.example.com/media/websocket?token=")
    assert call["variables"] == {"venue": "Luigi's", "name": "Sam"}
    detail = await get_call(client, auth, call["id"])
    assert detail["metadata"] == {"source": "test"}
    agent = detail["agent"]
    assert agent["systemPrompt"] == "You book tables for Luigi's."
    assert agent["greeting"] == "Hi Sam, {{variables.unknown}} here."
    assert agent["maxDurationSeconds"] == 600
    assert agent["inactivityTimeoutSeconds"] == 20
    assert agent["inactivityAction"] == "hangup"
    assert agent["firstSpeaker"] == "user"
    assert agent["voice"] == "espeak-en-gb"
    assert agent["webhookUrl"] == HOOK
    assert "webhookSecret" not in agent  # the secret is shown once, on create
    assert detail["recording"]["status"] == "pending"  # enabled, the call not over yet
    async with database.session() as session:
        row = await session.get(Call, call["id"])
    assert row.agent_snapshot["webhook_secret"] == call["webhookSecret"]
    assert row.agent_snapshot["speculative_turns"] is True


async def test_inline_hosted_call_defaults(client, auth):
    resp = await client.post("/v1/calls/inline", json={"systemPrompt": "Be brief."}, headers=auth)
    assert resp.status == 201
    call = await resp.json()
    assert call["voiceMode"] == "hosted"
    assert call["webhookSecret"] is None
    assert call["connectionType"] == "twilio"
    agent = (await get_call(client, auth, call["id"]))["agent"]
    assert agent["maxDurationSeconds"] == 3000
    assert agent["temperature"] == 0
    assert agent["interruptible"] is False
    assert agent["recordingEnabled"] is True  # as the inline-call reference defaults it
    assert agent["speculativeTurns"] is False


async def test_an_inline_hosted_call_takes_tools_checked_like_an_agents(client, auth):
    tools = [
        {
            "name": "lookup_order",
            "description": "Find an order.",
            "url": "https://tools.example.com/orders",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
        {"name": "end_call"},
    ]
    resp = await client.post(
        "/v1/calls/inline", json={"systemPrompt": "Be brief.", "tools": tools}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    agent = (await get_call(client, auth, (await resp.json())["id"]))["agent"]
    assert [t["name"] for t in agent["tools"]] == ["lookup_order", "end_call"]
    assert agent["tools"][0]["url"] == "https://tools.example.com/orders"
    for bad, field in (
        ([{**tools[0], "url": "ftp://tools.example.com/orders"}], "tools.0.url"),
        ([tools[1], tools[1]], None),
        ([{"name": "transfer_call"}], None),
    ):
        resp = await client.post(
            "/v1/calls/inline", json={"systemPrompt": "Be brief.", "tools": bad}, headers=auth
        )
        assert resp.status == 422, await resp.text()
        if field is not None:
            assert (await resp.json())["error"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, None),
        ({"systemPrompt": "x", "maxDuration": 59}, "maxDuration"),
        ({"systemPrompt": "x", "maxDuration": 7201}, "maxDuration"),
        ({"systemPrompt": "x", "inactivityTimeout": 9}, "inactivityTimeout"),
        ({"systemPrompt": "x", "inactivityTimeout": 301}, "inactivityTimeout"),
        ({"systemPrompt": "x", "temperature": 1.5}, "temperature"),
        ({"systemPrompt": "x", "connectionType": "sip"}, "connectionType"),
        ({"webhookUrl": "ftp://x"}, "webhookUrl"),
    ],
)
async def test_inline_refuses_bad_config(client, auth, body, field):
    resp = await client.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 422
    if field is not None:
        fields = [d["field"] for d in (await resp.json())["error"]["details"]]
        assert field in fields


async def test_inline_webhook_url_must_be_public_unless_allowed(database, aiohttp_client, auth):
    app = create_app(Settings(**{**BASE, "allow_private_webhooks": False}), db=database)
    strict = await aiohttp_client(app)
    resp = await strict.post(
        "/v1/calls/inline", json={"webhookUrl": "http://10.0.0.1/hook"}, headers=auth
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "invalid_webhook_url"


# --- snapshots and variables -------------------------------------------------------------------


async def test_a_call_keeps_the_agent_it_started_with(client, auth):
    agent = await new_agent(
        client, auth, greeting="Hello {{variables.name}}", systemPrompt="Old {{ variables.x }}"
    )
    first = await byot_call(client, auth, agent["id"], variables={"name": "Ann", "x": 1})
    await client.patch(
        f"/v1/agents/{agent['id']}",
        json={"greeting": "Goodbye", "maxDurationSeconds": 120},
        headers=auth,
    )
    second = await byot_call(client, auth, agent["id"])
    old = (await get_call(client, auth, first["id"]))["agent"]
    new = (await get_call(client, auth, second["id"]))["agent"]
    assert old["greeting"] == "Hello Ann"
    assert old["systemPrompt"] == "Old 1"
    assert old["maxDurationSeconds"] == 3000
    assert new["greeting"] == "Goodbye"
    assert new["maxDurationSeconds"] == 120
    assert first["variables"] == {"name": "Ann", "x": 1}


# --- publishable keys --------------------------------------------------------------------------


async def test_publishable_key_creates_calls_only_within_its_scope(client, auth, make_key):
    agent = await new_agent(client, auth)
    other = await new_agent(client, auth)
    await new_number(client, auth, agent["id"])
    pk = await make_key("proj-a", kind="publishable", channels=["phone"], agents=[agent["id"]])

    assert (await phone_call(client, pk, agent["id"]))["status"] == "queued"
    assert (await byot_call(client, pk, agent["id"], "twilio"))["status"] == "connecting"

    async def refused(body, field=None):
        resp = await client.post("/v1/calls", json=body, headers=pk)
        assert resp.status == 403, body
        err = (await resp.json())["error"]
        assert err["code"] == "key_scope_violation"
        if field:
            assert err["field"] == field

    await refused({"agentId": agent["id"], "connectionType": "websocket"})
    await refused({"agentId": other["id"], "to": "+14155550123"}, "agentId")
    await refused({"agentId": agent["id"], "to": "+14155550123", "from": "+14155550100"}, "from")

    web_only = await make_key("proj-a", kind="publishable", channels=["web"])
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "to": "+14155550123"}, headers=web_only
    )
    assert resp.status == 403
    ws = await make_key("proj-a", kind="publishable", channels=["websocket"])
    assert (await byot_call(client, ws, agent["id"]))["connectionType"] == "websocket"


async def test_publishable_key_cannot_reach_another_projects_agent(client, make_key):
    theirs = await make_key("proj-b")
    agent = await new_agent(client, theirs)
    pk = await make_key("proj-a", kind="publishable", channels=["websocket"])
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "websocket"}, headers=pk
    )
    assert resp.status == 404


async def test_publishable_keys_are_refused_on_every_read_and_on_end(client, auth, make_key):
    agent = await new_agent(client, auth)
    number = await new_number(client, auth, agent["id"])
    call = await byot_call(client, auth, agent["id"])
    pk = await make_key("proj-a", kind="publishable", channels=["web", "phone", "websocket"])
    reads = [
        ("GET", "/v1/calls"),
        ("GET", "/v1/calls/active"),
        ("GET", f"/v1/calls/{call['id']}"),
        ("GET", f"/v1/calls/{call['id']}/transcript"),
        ("GET", f"/v1/calls/{call['id']}/events"),
        ("GET", f"/v1/calls/{call['id']}/metrics"),
        ("GET", f"/v1/numbers/{number['id']}/calls"),
        ("POST", f"/v1/calls/{call['id']}/end"),
        ("POST", "/v1/calls/inline"),
        ("GET", "/v1/webhook-endpoints"),
        ("POST", "/v1/webhook-endpoints"),
    ]
    for method, path in reads:
        resp = await client.request(method, path, headers=pk, json={})
        assert resp.status == 403, (method, path)
        assert (await resp.json())["error"]["code"] == "publishable_key_not_allowed"


# --- reads -------------------------------------------------------------------------------------


async def make_calls(client, auth, database):
    """Six calls over two agents and two numbers, in several states."""
    a = await new_agent(client, auth)
    b = await new_agent(client, auth)
    na = await new_number(client, auth, a["id"])
    nb = await new_number(client, auth, b["id"])
    out = {
        "a_ws": await byot_call(client, auth, a["id"]),
        "a_ws2": await byot_call(client, auth, a["id"]),
        "b_ws": await byot_call(client, auth, b["id"]),
        "a_tw": await byot_call(client, auth, a["id"], "twilio"),
    }
    await move(database, out["a_ws"]["id"], "in_progress")
    await move(database, out["a_ws2"]["id"], "in_progress", "completed")
    await move(database, out["b_ws"]["id"], "failed", reason="network_timeout")
    out["a_out"] = await phone_call(client, auth, a["id"])
    out["b_out"] = await phone_call(client, auth, b["id"])
    await wait_status(client, auth, out["a_out"]["id"], "failed")
    await wait_status(client, auth, out["b_out"]["id"], "failed")
    return a, b, na, nb, out


async def listed(client, auth, path="/v1/calls", **params) -> list[str]:
    resp = await client.get(path, params=params, headers=auth)
    assert resp.status == 200, await resp.text()
    return [c["id"] for c in (await resp.json())["data"]]


async def test_list_filters(client, auth, database):
    a, b, na, nb, calls = await make_calls(client, auth, database)
    ids = {k: v["id"] for k, v in calls.items()}
    everything = await listed(client, auth)
    assert everything == sorted(ids.values(), reverse=True)  # newest first
    assert set(await listed(client, auth, agentId=a["id"])) == {
        ids["a_ws"],
        ids["a_ws2"],
        ids["a_tw"],
        ids["a_out"],
    }
    assert await listed(client, auth, numberId=nb["id"]) == [ids["b_out"]]
    assert await listed(client, auth, status="completed") == [ids["a_ws2"]]
    assert set(await listed(client, auth, status="failed")) == {
        ids["b_ws"],
        ids["a_out"],
        ids["b_out"],
    }
    assert set(await listed(client, auth, direction="outbound")) == {ids["a_out"], ids["b_out"]}
    assert len(await listed(client, auth, direction="inbound")) == 4
    assert await listed(client, auth, agentId=b["id"], direction="inbound") == [ids["b_ws"]]

    async with database.session() as session:
        created = {c.id: c.created_at for c in (await session.execute(select(Call))).scalars()}
    pivot = created[ids["b_ws"]]
    after = await listed(client, auth, createdAfter=pivot.isoformat())
    before = await listed(client, auth, createdBefore=pivot.isoformat())
    assert set(after) == {i for i, t in created.items() if t > pivot}
    assert set(before) == {i for i, t in created.items() if t < pivot}
    naive = pivot.astimezone(UTC).replace(tzinfo=None).isoformat()
    assert await listed(client, auth, createdAfter=naive) == after  # no zone means UTC

    for bad in (
        {"status": "ended"},
        {"direction": "sideways"},
        {"createdAfter": "yesterday"},
        {"limit": 0},
        {"limit": 201},
        {"cursor": "not-ours"},
    ):
        resp = await client.get("/v1/calls", params=bad, headers=auth)
        assert resp.status == 422, bad


async def test_pages_cover_every_call_once_in_a_stable_order(client, auth, database):
    agent = await new_agent(client, auth)
    made = [(await byot_call(client, auth, agent["id"]))["id"] for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/calls", params=params, headers=auth)
        body = await resp.json()
        seen += [c["id"] for c in body["data"]]
        pages += 1
        if not body["hasMore"]:
            assert body["nextCursor"] is None
            break
        cursor = body["nextCursor"]
    assert pages == 3
    assert seen == sorted(made, reverse=True)
    # A new call does not shift the pages already handed out.
    await byot_call(client, auth, agent["id"])
    resp = await client.get("/v1/calls", params={"limit": 3, "cursor": cursor}, headers=auth)
    assert [c["id"] for c in (await resp.json())["data"]] == seen[6:]


async def test_active_lists_only_calls_that_have_not_ended(client, auth, database):
    a, b, na, nb, calls = await make_calls(client, auth, database)
    active = await listed(client, auth, "/v1/calls/active")
    assert set(active) == {calls["a_ws"]["id"], calls["a_tw"]["id"]}
    assert await listed(client, auth, "/v1/calls/active", agentId=b["id"]) == []
    assert await listed(client, auth, "/v1/calls/active", status="connecting") == [
        calls["a_tw"]["id"]
    ]


async def test_calls_of_a_number(client, auth, database, make_key):
    a, b, na, nb, calls = await make_calls(client, auth, database)
    path = f"/v1/numbers/{na['id']}/calls"
    assert await listed(client, auth, path) == [calls["a_out"]["id"]]
    assert await listed(client, auth, path, status="completed") == []
    resp = await client.get("/v1/numbers/num_nope/calls", headers=auth)
    assert resp.status == 404
    # Still listed once the number is released.
    await client.delete(f"/v1/numbers/{na['id']}", headers=auth)
    assert await listed(client, auth, path) == [calls["a_out"]["id"]]
    other = await make_key("proj-b")
    assert (await client.get(path, headers=other)).status == 404


async def add_turns(database, call_id) -> None:
    async with database.session() as session:
        for seq, (speaker, text, interrupted) in enumerate(
            [
                ("agent", "Hi, this is Ava.", False),
                ("user", "I'd like a table.", False),
                ("agent", "Sure, for how many", True),
                ("dtmf", "4", False),
            ]
        ):
            session.add(
                TranscriptSegment(
                    id=new_id("seg"),
                    call_id=call_id,
                    seq=seq,
                    speaker=speaker,
                    text=text,
                    start_ms=seq * 1000,
                    end_ms=seq * 1000 + 800,
                    interrupted=interrupted,
                )
            )
        for i, values in enumerate(
            [
                {"stt_ms": 300, "webhook_first_chunk_ms": 120, "tts_first_audio_ms": 80},
                {"stt_ms": 500, "webhook_first_chunk_ms": 220, "tts_first_audio_ms": None},
            ]
        ):
            session.add(
                TurnMetrics(
                    id=new_id("tm"),
                    call_id=call_id,
                    turn_id=f"turn_{i}",
                    values=values,
                    created_at=utcnow() + timedelta(milliseconds=i),
                )
            )


async def test_call_detail_transcript_and_metrics(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    await move(database, call["id"], "in_progress")
    await add_turns(database, call["id"])
    await move(database, call["id"], "completed")

    detail = await get_call(client, auth, call["id"])
    assert detail["status"] == "completed"
    assert detail["durationSeconds"] >= 0
    text = "Agent: Hi, this is Ava.\nCaller: I'd like a table.\n"
    text += "Agent: Sure, for how many [interrupted]\nCaller (keypad): 4"
    assert detail["transcript"]["text"] == text
    assert [s["speaker"] for s in detail["transcript"]["segments"]] == [
        "agent",
        "user",
        "agent",
        "dtmf",
    ]
    assert detail["recording"]["status"] == "disabled" and detail["recording"]["url"] is None
    assert lifecycle_messages(detail) == [
        "status -> queued",
        "status -> connecting",
        "status -> in_progress",
        "status -> completed",
    ]

    resp = await client.get(f"/v1/calls/{call['id']}/transcript", headers=auth)
    transcript = await resp.json()
    assert transcript == detail["transcript"]
    assert transcript["segments"][2] == {
        "seq": 2,
        "speaker": "agent",
        "text": "Sure, for how many",
        "startMs": 2000,
        "endMs": 2800,
        "interrupted": True,
        "data": None,
    }

    resp = await client.get(f"/v1/calls/{call['id']}/metrics", headers=auth)
    metrics = await resp.json()
    assert metrics == detail["metrics"]
    assert metrics["turns"] == 2
    assert metrics["stages"]["sttMs"] == {
        "count": 2,
        "mean": 400.0,
        "p50": 300.0,
        "p95": 500.0,
        "max": 500.0,
    }
    assert metrics["stages"]["ttsFirstAudioMs"]["count"] == 1
    assert metrics["perTurn"][0] == {
        "turnId": "turn_0",
        "sttMs": 300,
        "webhookFirstChunkMs": 120,
        "ttsFirstAudioMs": 80,
    }


async def test_call_events_page_in_order_with_filters(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    await move(database, call["id"], "in_progress")
    from relay.calls.event_log import log_event

    for i in range(5):
        async with database.session() as session:
            await log_event(session, call["id"], "webhook", f"turn {i} slow", level="warning")
    await move(database, call["id"], "failed", reason="webhook_error")

    path = f"/v1/calls/{call['id']}/events"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = await (await client.get(path, params=params, headers=auth)).json()
        seen += body["data"]
        if not body["hasMore"]:
            break
        cursor = body["nextCursor"]
    assert [e["message"] for e in seen] == [
        "status -> queued",
        "status -> connecting",
        "status -> in_progress",
        *[f"turn {i} slow" for i in range(5)],
        "status -> failed (webhook_error)",
    ]
    assert set(seen[0]) == {"id", "callId", "level", "source", "message", "data", "createdAt"}
    assert seen[-1]["level"] == "error"
    warnings = await (await client.get(path, params={"level": "warning"}, headers=auth)).json()
    assert len(warnings["data"]) == 5
    lifecycle = await (await client.get(path, params={"source": "lifecycle"}, headers=auth)).json()
    assert len(lifecycle["data"]) == 4
    resp = await client.get(path, params={"cursor": "bm9wZV9ub3Bl"}, headers=auth)
    assert resp.status == 422


# --- end ---------------------------------------------------------------------------------------


async def test_end_completes_a_call_in_progress_and_409s_after(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    await move(database, call["id"], "in_progress")
    resp = await client.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "completed"
    assert body["failureReason"] is None
    resp = await client.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "call_already_ended"
    detail = await get_call(client, auth, call["id"])
    assert "Ended through the API." in [e["message"] for e in detail["events"]]


async def test_end_cancels_a_call_not_yet_answered(client, auth):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    body = await (await client.post(f"/v1/calls/{call['id']}/end", headers=auth)).json()
    assert (body["status"], body["failureReason"]) == ("failed", "canceled")


async def test_end_stops_a_ringing_outbound_call(database, aiohttp_client, auth):
    app = create_app(Settings(**{**BASE, "outbound_ring_timeout_seconds": 60}), db=database)
    client = await aiohttp_client(app)
    agent = await new_agent(client, auth)
    await new_number(client, auth, agent["id"])
    call = await phone_call(client, auth, agent["id"])
    await wait_status(client, auth, call["id"], "ringing")
    body = await (await client.post(f"/v1/calls/{call['id']}/end", headers=auth)).json()
    assert (body["status"], body["failureReason"]) == ("failed", "canceled")
    detail = await get_call(client, auth, call["id"])
    assert lifecycle_messages(detail)[-1] == "status -> failed (canceled)"
    assert len([m for m in lifecycle_messages(detail) if "failed" in m]) == 1


async def test_end_of_an_ended_call_stored_elsewhere_is_409(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    await move(database, call["id"], "failed", reason="network_timeout")
    resp = await client.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 409


# --- isolation ---------------------------------------------------------------------------------


async def test_calls_of_another_project_are_404_everywhere(client, auth, make_key):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    other = await make_key("proj-b")
    for method, path in [
        ("GET", f"/v1/calls/{call['id']}"),
        ("GET", f"/v1/calls/{call['id']}/transcript"),
        ("GET", f"/v1/calls/{call['id']}/events"),
        ("GET", f"/v1/calls/{call['id']}/metrics"),
        ("POST", f"/v1/calls/{call['id']}/end"),
    ]:
        resp = await client.request(method, path, headers=other)
        assert resp.status == 404, (method, path)
    assert await listed(client, other) == []
    assert await listed(client, other, "/v1/calls/active") == []
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "websocket"}, headers=other
    )
    assert resp.status == 404
    assert (await get_call(client, auth, call["id"]))["status"] == "connecting"


# --- the state machine -------------------------------------------------------------------------

ILLEGAL = [
    (current, wanted)
    for current, wanted in itertools.product(STATUSES, STATUSES)
    if wanted not in TRANSITIONS[current]
]
PATHS = {
    "queued": [],
    "connecting": ["connecting"],
    "ringing": ["connecting", "ringing"],
    "in_progress": ["connecting", "in_progress"],
    "completed": ["connecting", "in_progress", "completed"],
    "failed": ["failed"],
}


async def counts(database, call_id) -> tuple[int, int]:
    async with database.session() as session:
        events = await session.scalar(
            select(func.count()).select_from(CallEvent).where(CallEvent.call_id == call_id)
        )
        emitted = await session.scalar(
            select(func.count())
            .select_from(LifecycleEvent)
            .where(LifecycleEvent.ordering_key == call_id)
        )
    return events, emitted


async def fresh_call(client, auth, database) -> str:
    """A call at ``queued``, however the API opened it."""
    call = await byot_call(client, auth, (await new_agent(client, auth))["id"])
    async with database.session() as session:
        row = await lock_call(session, call["id"])
        row.status = "queued"
    return str(call["id"])


async def test_every_illegal_transition_is_refused_and_not_stored(client, auth, database):
    assert len(ILLEGAL) == 27
    for current, wanted in ILLEGAL:
        call_id = await fresh_call(client, auth, database)
        await move(database, call_id, *PATHS[current], reason="network_timeout")
        before = await counts(database, call_id)
        with pytest.raises(IllegalTransition) as refused:
            async with database.session() as session:
                call = await lock_call(session, call_id)
                await transition(session, call, wanted, reason="canceled")
        assert (refused.value.current, refused.value.wanted) == (current, wanted)
        async with database.session() as session:
            assert (await session.get(Call, call_id)).status == current, (current, wanted)
        assert await counts(database, call_id) == before, (current, wanted)


async def test_every_legal_transition_is_stored_logged_and_emitted(client, auth, database):
    legal = [(c, w) for c in STATUSES for w in sorted(TRANSITIONS[c])]
    assert len(legal) == 9
    for current, wanted in legal:
        call_id = await fresh_call(client, auth, database)
        await move(database, call_id, *PATHS[current], reason="busy")
        before = await counts(database, call_id)
        await move(database, call_id, wanted, reason="busy")
        assert await counts(database, call_id) == (before[0] + 1, before[1] + 1)
        async with database.session() as session:
            row = await session.get(Call, call_id)
            last = await session.scalar(
                select(LifecycleEvent)
                .where(LifecycleEvent.ordering_key == call_id)
                .order_by(LifecycleEvent.created_at.desc())
                .limit(1)
            )
        assert row.status == wanted
        assert last.type == f"call.{wanted}"
        assert last.data["status"] == wanted


async def test_failing_needs_a_known_reason(client, auth, database):
    agent = await new_agent(client, auth)
    call = await byot_call(client, auth, agent["id"])
    for reason in (None, "bored"):
        with pytest.raises(ValueError):
            async with database.session() as session:
                row = await lock_call(session, call["id"])
                await transition(session, row, "failed", reason=reason)
    assert (await get_call(client, auth, call["id"]))["status"] == "connecting"


# --- restart recovery --------------------------------------------------------------------------


async def test_a_restart_closes_the_calls_a_dead_node_left_and_dials_queued_ones(
    database, aiohttp_client, auth
):
    first = await aiohttp_client(create_app(Settings(**BASE), db=database))
    agent = await new_agent(first, auth)
    number = await new_number(first, auth, agent["id"])
    unheld = await byot_call(first, auth, agent["id"])
    await move(database, unheld["id"], "in_progress")
    mine = await byot_call(first, auth, agent["id"])
    dead = await byot_call(first, auth, agent["id"])
    alive = await byot_call(first, auth, agent["id"])
    async with database.session() as session:
        assert await hold_call(session, mine["id"], "test-node")  # this node, previous life
        assert await hold_call(session, dead["id"], "node-dead")
        assert await hold_call(session, alive["id"], "node-alive")
        session.add(RelayNode(id="node-dead", heartbeat_at=utcnow() - timedelta(hours=1)))
        # Alive, and up since before the calls were made: an unheld call may be its own.
        session.add(
            RelayNode(
                id="node-alive",
                started_at=utcnow() - timedelta(hours=1),
                heartbeat_at=utcnow() + timedelta(hours=1),
            )
        )
        # An outbound call stored just before the crash, never dialled.
        queued = await session.get(Call, unheld["id"])
        never_dialled = Call(
            id=new_id("call"),
            project_id=queued.project_id,
            agent_id=agent["id"],
            number_id=number["id"],
            direction="outbound",
            connection_type="sim",
            from_number=number["phoneNumber"],
            to_number="+14155550123",
            status="queued",
            voice_mode="webhook",
            agent_snapshot={},
            call_metadata={},
            created_at=utcnow(),
        )
        session.add(never_dialled)
    await first.close()

    # The new life of "test-node" starts on the same database.
    second = await aiohttp_client(create_app(Settings(**BASE), db=database))
    for call in (mine, dead):
        detail = await get_call(second, auth, call["id"])
        assert (detail["status"], detail["failureReason"]) == ("failed", "relay_restart")
        assert "status -> failed (relay_restart)" in lifecycle_messages(detail)
    # Another node is alive: an unheld call may be its own, and its own calls stay.
    assert (await get_call(second, auth, unheld["id"]))["status"] == "in_progress"
    assert (await get_call(second, auth, alive["id"]))["status"] == "connecting"
    dialled = await wait_status(second, auth, never_dialled.id, "failed")
    assert dialled["failureReason"] == "no_answer"
    assert "status -> ringing" in lifecycle_messages(dialled)
    await second.close()


async def test_a_lone_node_closes_unheld_live_calls_on_restart(database, aiohttp_client, auth):
    first = await aiohttp_client(create_app(Settings(**BASE), db=database))
    agent = await new_agent(first, auth)
    talking = await byot_call(first, auth, agent["id"])
    await move(database, talking["id"], "in_progress")
    waiting = await byot_call(first, auth, agent["id"])
    finished = await byot_call(first, auth, agent["id"])
    await move(database, finished["id"], "in_progress", "completed")
    await first.close()

    second = await aiohttp_client(create_app(Settings(**BASE), db=database))
    for call in (talking, waiting):
        detail = await get_call(second, auth, call["id"])
        assert (detail["status"], detail["failureReason"]) == ("failed", "relay_restart")
    assert (await get_call(second, auth, finished["id"]))["status"] == "completed"
    await second.close()


async def test_calls_nobody_joins_expire_after_their_token(client, auth, database):
    from relay.calls.recovery import expire_unjoined

    agent = await new_agent(client, auth)
    stale = await byot_call(client, auth, agent["id"])
    fresh = await byot_call(client, auth, agent["id"])
    held = await byot_call(client, auth, agent["id"])
    async with database.session() as session:
        for call_id in (stale["id"], held["id"]):
            row = await session.get(Call, call_id)
            row.created_at = utcnow() - timedelta(minutes=2)
        assert await hold_call(session, held["id"], "test-node")
    assert await expire_unjoined(database, 90) == [stale["id"]]
    detail = await get_call(client, auth, stale["id"])
    assert (detail["status"], detail["failureReason"]) == ("failed", "network_timeout")
    assert (await get_call(client, auth, fresh["id"]))["status"] == "connecting"
    assert (await get_call(client, auth, held["id"]))["status"] == "connecting"


# --- the carrier dialling seam -----------------------------------------------------------------


class ScriptedLeg:
    def __init__(self):
        self.carrier_call_id = "CA123"
        self.hung_up = False

    async def hangup(self):
        self.hung_up = True


class ScriptedCarrier:
    """A carrier that places calls, scripted per number: how the dialler treats what
    ``dial`` answers (tests/carriers/test_twilio_outbound.py answers through Twilio's fake)."""

    name = "twilio"

    def __init__(self):
        self.requests = []
        self.legs = []

    async def provision(self, request):
        raise NotImplementedError

    async def release(self, phone_number, provider_sid):
        return None

    async def configure(self, phone_number, provider_sid, webhook_base_url):
        return None

    async def dial(self, request):
        from relay.carriers import CarrierUnavailable, DialFailed

        self.requests.append(request)
        if request.to_number.endswith("0100"):
            raise DialFailed("busy", "The line was busy.")
        if request.to_number.endswith("0101"):
            raise CarrierUnavailable("twilio answered 503")
        leg = ScriptedLeg()
        self.legs.append(leg)
        return leg


@pytest.mark.parametrize(
    ("to", "status", "reason", "last"),
    [
        ("+14155550100", "failed", "busy", "status -> failed (busy)"),
        ("+14155550101", "failed", "provider_error", "status -> failed (provider_error)"),
        ("+14155550103", "failed", "no_answer", "status -> failed (no_answer)"),
    ],
)
async def test_outbound_calls_go_through_the_numbers_carrier(
    client, auth, database, to, status, reason, last
):
    carrier = ScriptedCarrier()
    client.app[APP_STATE].carriers._carriers["twilio"] = carrier
    agent = await new_agent(client, auth)
    resp = await client.post(
        "/v1/numbers/import",
        json={
            "provider": "twilio",
            "phoneNumber": "+14155550199",
            "credentialsRef": "main",
            "agentId": agent["id"],
        },
        headers=auth,
    )
    assert resp.status == 201
    call = await phone_call(client, auth, agent["id"], to=to)
    assert call["connectionType"] == "twilio"
    done = await wait_status(client, auth, call["id"], status)
    assert done["failureReason"] == reason
    assert lifecycle_messages(done)[-1] == last
    [request] = carrier.requests
    assert (request.call_id, request.from_number, request.to_number) == (
        call["id"],
        "+14155550199",
        to,
    )
    assert request.media_base_url == "wss://relay.example.com"
    assert (
        tokens.verify(client.app[APP_STATE].signing_key, request.media_token, "media")
        == (call["id"])
    )
    if reason == "no_answer":
        assert carrier.legs[0].hung_up
    async with database.session() as session:
        row = await session.get(Call, call["id"])
        lease = await session.get(CallLease, call["id"])
    assert lease is None
    assert row.carrier_call_id == ("CA123" if reason == "no_answer" else None)


async def test_a_carrier_that_cannot_dial_fails_the_call(client, auth):
    agent = await new_agent(client, auth)
    resp = await client.post(
        "/v1/numbers/import",
        json={"provider": "twilio", "phoneNumber": "+14155550198", "agentId": agent["id"]},
        headers=auth,
    )
    # No Vonage number can be imported (this relay has no Vonage carrier): store it as one.
    async with client.app[APP_STATE].db.session() as session:
        (await session.get(Number, (await resp.json())["id"])).provider = "vonage"
    call = await phone_call(client, auth, agent["id"])
    done = await wait_status(client, auth, call["id"], "failed")
    assert done["failureReason"] == "provider_error"
    telephony = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    assert telephony == ["The vonage carrier cannot place calls from this relay yet."]
