"""The sim carrier's voice webhook: who may place a sim call, and what it answers."""

from __future__ import annotations

import pytest

from relay import tokens
from relay.calls.media import MEDIA
from relay.state import APP_STATE
from tests.transports.support import ScriptedEngine, agent_with_number, calls, phone_settings

VOICE = "/carriers/sim/voice"


@pytest.fixture
async def phone(database, app_client):
    client = await app_client(phone_settings())
    client.app[MEDIA].engine = ScriptedEngine()
    return client


async def test_a_sim_call_answers_where_to_stream_and_opens_the_call(phone, auth, database):
    agent, number = await agent_with_number(phone, auth)
    resp = await phone.post(VOICE, json={"to": number, "from": "+15005550006"}, headers=auth)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["protocol"] == "twilio-media-streams"
    assert body["mediaUrl"] == "wss://relay.example.com/media/twilio"
    assert body["streamUrl"] == f"{body['mediaUrl']}?token={body['token']}"
    assert body["agentId"] == agent["id"]
    assert tokens.verify(phone.app[APP_STATE].signing_key, body["token"], "media") == body["callId"]
    [call] = await calls(database)
    assert (call.id, call.connection_type, call.status) == (body["callId"], "sim", "connecting")
    assert (call.from_number, call.to_number) == ("+15005550006", number)


async def test_a_sim_call_needs_a_secret_key(phone, auth, make_key, database):
    _, number = await agent_with_number(phone, auth)
    resp = await phone.post(VOICE, json={"to": number})
    assert resp.status == 401
    publishable = await make_key("proj-a", kind="publishable")
    resp = await phone.post(VOICE, json={"to": number}, headers=publishable)
    assert resp.status == 403
    assert await calls(database) == []


async def test_another_projects_number_is_not_found(phone, auth, make_key, database):
    _, number = await agent_with_number(phone, auth)
    other = await make_key("proj-b")
    resp = await phone.post(VOICE, json={"to": number}, headers=other)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_number"
    assert await calls(database) == []


async def test_unknown_and_unbound_numbers_are_refused(phone, auth, database):
    resp = await phone.post(VOICE, json={"to": "+14155550199"}, headers=auth)
    assert resp.status == 404
    number = (await (await phone.post("/v1/numbers", json={}, headers=auth)).json())["phoneNumber"]
    resp = await phone.post(VOICE, json={"to": number}, headers=auth)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("unbound_number", "to")


async def test_the_body_is_validated(phone, auth):
    resp = await phone.post(VOICE, json={"from": "+15005550006"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "to"


async def test_with_the_sim_carrier_off_there_is_no_sim_endpoint(app_client, make_key, database):
    client = await app_client(phone_settings(sim_enabled=False))
    resp = await client.post(VOICE, json={"to": "+14155550100"}, headers=await make_key())
    assert resp.status == 404
