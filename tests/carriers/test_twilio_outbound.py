"""Outbound calls through Twilio, on the wire: the relay's Calls REST request, Twilio's signed
status callbacks, and the media socket the fake Twilio opens when the callee answers.

The engine behind the media socket is scripted here (tests/transports/support.py); the
same calls with real speech are in test_twilio_outbound_voice.py.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from relay import tokens
from relay.calls import inbound
from relay.calls.media import MEDIA
from relay.config import Settings
from relay.secretbox import new_key
from relay.state import APP_STATE
from relay.store.models import Call
from tests.conftest import DEPLOYMENT_SID, DEPLOYMENT_TOKEN, deployment_twilio
from tests.transports.support import ScriptedEngine, agent_with_number, wait_for

PUBLIC_URL = "https://relay.example.com"
CALLEE = "+14155550123"
SID_A, TOKEN_A = "AC" + "a" * 32, "tokenofaccountaaaaaaaaaaaaaaaa1"
SID_B, TOKEN_B = "AC" + "b" * 32, "tokenofaccountbbbbbbbbbbbbbbbb2"
STATUS = "/carriers/twilio/voice/status"


@pytest.fixture
def fake(twilio_rest):
    fake = twilio_rest[0]
    fake.add_account(SID_A, TOKEN_A)
    fake.add_account(SID_B, TOKEN_B)
    return fake


@pytest.fixture
def settings(twilio_rest, fake) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        encryption_key=new_key(),
        outbound_ring_timeout_seconds=5,
        **deployment_twilio(twilio_rest[1]),
    )


@pytest.fixture
async def phone(client, fake):
    """The relay (a scripted engine behind its media sockets), reached by the fake Twilio's
    callbacks and media sockets through ``deliver_to``."""
    client.app[MEDIA].engine = ScriptedEngine()
    fake.deliver_to = (PUBLIC_URL, str(client.make_url("")).rstrip("/"))
    yield client
    for call in fake.voice.calls.values():
        call.hangup.set()
    await fake.settle()


async def place(client, auth, agent_id: str, to: str = CALLEE) -> dict[str, Any]:
    resp = await client.post("/v1/calls", json={"agentId": agent_id, "to": to}, headers=auth)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def call_of(client, auth, call_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/calls/{call_id}", headers=auth)
    assert resp.status == 200
    return await resp.json()


async def until(client, auth, call_id: str, status: str, within: float = 8.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while (call := await call_of(client, auth, call_id))["status"] != status:
        assert time.monotonic() < deadline, call
        await asyncio.sleep(0.02)
    return call


async def carrier_call_id(database, call_id: str) -> str | None:
    async with database.session() as session:
        return (await session.get(Call, call_id)).carrier_call_id


def statuses(call: dict[str, Any]) -> list[str]:
    return [e["message"] for e in call["events"] if e["source"] == "lifecycle"]


async def test_the_relay_asks_twilio_to_ring_and_stream_the_answered_call(
    phone, auth, fake, database
):
    fake.voice.unanswered.add(CALLEE)  # it rings: the request is what this test reads
    agent, number = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")

    [placed] = fake.voice.calls.values()
    assert placed.account_sid == DEPLOYMENT_SID
    form = placed.form
    assert (form["To"], form["From"], form["Timeout"]) == (CALLEE, number, "5")
    assert placed.events == ["initiated", "ringing", "answered", "completed"]
    assert form["StatusCallback"] == f"{PUBLIC_URL}{STATUS}?callId={call['id']}"
    assert form["StatusCallbackMethod"] == "POST"
    connect = ET.fromstring(form["Twiml"]).find("Connect")
    stream = connect.find("Stream")
    url = urlsplit(stream.get("url"))
    assert (url.scheme, url.netloc, url.path) == ("wss", "relay.example.com", "/media/twilio")
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["token"] == parse_qs(url.query)["token"][0]
    key = phone.app[APP_STATE].signing_key
    assert tokens.verify(key, params["token"], "media") == call["id"] == params["callId"]
    assert connect.get("action") == f"{PUBLIC_URL}/carriers/twilio/voice/after?callId={call['id']}"
    # Twilio's callbacks were signed and taken: initiated and ringing.
    await wait_for(lambda: len(placed.callbacks) == 2)
    assert placed.callbacks == [("initiated", 204), ("ringing", 204)]
    assert await carrier_call_id(database, call["id"]) == placed.sid


@pytest.mark.parametrize(
    ("rule", "reason", "twilio_status"),
    [("busy", "busy", "busy"), ("failing", "provider_error", "failed")],
)
async def test_a_leg_twilio_reports_ended_fails_the_call_with_its_reason(
    phone, auth, fake, rule, reason, twilio_status
):
    getattr(fake.voice, rule).add(CALLEE)
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    done = await until(phone, auth, call["id"], "failed")
    assert done["failureReason"] == reason
    assert statuses(done)[-1] == f"status -> failed ({reason})"
    telephony = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    assert telephony[-1].startswith(f"Twilio reported the call {twilio_status}")
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 5)
    assert placed.callbacks[-1] == (twilio_status, 204)


async def test_nobody_answering_fails_no_answer_and_the_leg_is_canceled(
    phone, auth, fake, database
):
    fake.voice.unanswered.add(CALLEE)
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    done = await until(phone, auth, call["id"], "failed", within=12)
    assert done["failureReason"] == "no_answer"
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 5)
    assert placed.status in ("no-answer", "canceled")


async def test_a_call_ended_while_it_rings_is_canceled_at_twilio(phone, auth, fake):
    fake.voice.unanswered.add(CALLEE)
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")
    resp = await phone.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 200, await resp.text()
    done = await until(phone, auth, call["id"], "failed")
    assert done["failureReason"] == "canceled"
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 5)
    assert placed.status == "canceled"
    assert ("POST", f"/2010-04-01/Accounts/{DEPLOYMENT_SID}/Calls/{placed.sid}.json") in (
        fake.requests
    )
    assert placed.callbacks[-1] == ("canceled", 204)


async def test_twilio_down_fails_the_call_provider_error(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth)
    fake.down = True
    call = await place(phone, auth, agent["id"])
    done = await until(phone, auth, call["id"], "failed")
    assert done["failureReason"] == "provider_error"
    telephony = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    assert telephony == ["Twilio answered HTTP 503."]
    assert fake.voice.calls == {}


async def test_an_answered_call_goes_in_progress_when_its_media_socket_opens(
    phone, auth, fake, database
):
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    live = await until(phone, auth, call["id"], "in_progress")
    assert statuses(live) == [
        "status -> queued",
        "status -> connecting",
        "status -> ringing",
        "status -> in_progress",
    ]
    [placed] = fake.voice.calls.values()
    assert await carrier_call_id(database, call["id"]) == placed.sid
    [scripted] = engine.calls
    assert scripted.setup.direction == "outbound" and scripted.setup.to_number == CALLEE
    assert [s for s, _ in placed.callbacks] == ["initiated", "ringing", "in-progress"]
    # Hung up through the API: through Twilio's Calls update, not by the stream's end.
    resp = await phone.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 200
    await asyncio.wait_for(placed.ended.wait(), 8)
    assert placed.status == "completed" and placed.callbacks[-1] == ("completed", 204)
    assert placed.updates == [{"Status": "completed"}] and not placed.action_asked
    assert placed.transfer_to is None
    assert (await call_of(phone, auth, call["id"]))["status"] == "completed"


async def test_a_live_transfer_goes_through_twilios_calls_update_with_a_dial(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    [scripted] = engine.calls
    # What the engine does for a webhook's ``transfer``: the line's transfer, then the call
    # ends without hanging up (the recorder's final hang-up must not end the new leg).
    await scripted.line.transfer("+14155550188")
    await scripted.end()
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 8)
    [update] = placed.updates
    dial = ET.fromstring(update["Twiml"]).find("Dial")
    assert dial is not None and dial.text == "+14155550188"
    assert placed.transfer_to == "+14155550188" and not placed.action_asked
    await until(phone, auth, call["id"], "completed")


async def test_a_transfer_twilio_refuses_is_logged_and_dialled_when_the_stream_ends(
    phone, auth, fake
):
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    [scripted] = engine.calls
    fake.voice.update_error = 500
    with pytest.raises(Exception, match="Twilio"):
        await scripted.line.transfer("+14155550188")
    await scripted.end()
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 8)
    # Twilio's <Connect action> after the stream carries the transfer out instead.
    assert placed.action_asked and placed.transfer_to == "+14155550188"
    done = await until(phone, auth, call["id"], "completed")
    telephony = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    assert telephony[0] == "transfer"
    assert telephony[1].startswith("the carrier refused transfer: Twilio")


async def test_a_hangup_twilio_refuses_is_logged_and_the_call_still_ends(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    await until(phone, auth, call["id"], "in_progress")
    fake.voice.update_error = 503
    resp = await phone.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status == 200
    [placed] = fake.voice.calls.values()
    await asyncio.wait_for(placed.ended.wait(), 8)
    assert placed.updates == [{"Status": "completed"}]
    # The stream closed anyway; Twilio asked what next and was told to hang up.
    assert placed.action_asked and placed.transfer_to is None
    done = await until(phone, auth, call["id"], "completed")
    telephony = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    assert [m for m in telephony if m.startswith("the carrier refused hangup")], telephony


async def test_a_status_callback_with_a_bad_signature_is_refused(phone, auth, fake):
    fake.voice.unanswered.add(CALLEE)
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")
    [placed] = fake.voice.calls.values()
    path = f"{STATUS}?callId={call['id']}"
    form = {"AccountSid": DEPLOYMENT_SID, "CallSid": placed.sid, "CallStatus": "busy"}
    forged = RequestValidator("not-the-token").compute_signature(PUBLIC_URL + path, form)
    resp = await phone.post(path, data=form, headers={"X-Twilio-Signature": forged})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    resp = await phone.post(path, data=form)
    assert resp.status == 403
    assert (await call_of(phone, auth, call["id"]))["status"] == "ringing"
    # Signed right, the same report ends the call busy.
    good = RequestValidator(DEPLOYMENT_TOKEN).compute_signature(PUBLIC_URL + path, form)
    resp = await phone.post(path, data=form, headers={"X-Twilio-Signature": good})
    assert resp.status == 204
    assert (await until(phone, auth, call["id"], "failed"))["failureReason"] == "busy"


async def add_account(client, headers, sid, token) -> dict:
    body = {"provider": "twilio", "credentials": {"accountSid": sid, "authToken": token}}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def account_number(client, headers, account_id: str, phone_number: str) -> dict:
    agent_body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}
    resp = await client.post("/v1/agents", json=agent_body, headers=headers)
    agent = await resp.json()
    body = {
        "provider": "twilio",
        "phoneNumber": phone_number,
        "carrierAccountId": account_id,
        "agentId": agent["id"],
    }
    resp = await client.post("/v1/numbers/import", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return agent


async def test_a_projects_call_goes_out_on_its_own_twilio_account(phone, make_key, fake):
    a, b = await make_key("proj-a"), await make_key("proj-b")
    account_a = await add_account(phone, a, SID_A, TOKEN_A)
    await add_account(phone, b, SID_B, TOKEN_B)
    agent = await account_number(phone, a, account_a["id"], "+14155550101")
    fake.voice.unanswered.add(CALLEE)
    call = await place(phone, a, agent["id"])
    await until(phone, a, call["id"], "ringing")
    [placed] = fake.voice.calls.values()
    assert placed.account_sid == SID_A
    await wait_for(lambda: len(placed.callbacks) == 2)
    assert placed.callbacks == [("initiated", 204), ("ringing", 204)]

    # Project B's account signs a report for A's call: taken (it is Twilio's), changes nothing.
    path = f"{STATUS}?callId={call['id']}"
    form = {"AccountSid": SID_B, "CallSid": placed.sid, "CallStatus": "busy"}
    signature = RequestValidator(TOKEN_B).compute_signature(PUBLIC_URL + path, form)
    resp = await phone.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert resp.status == 204
    await asyncio.sleep(0.3)
    assert (await call_of(phone, a, call["id"]))["status"] == "ringing"
    resp = await phone.get(f"/v1/calls/{call['id']}", headers=b)
    assert resp.status == 404

    # A's own account ends it: the relay cancels the leg with A's credentials.
    resp = await phone.post(f"/v1/calls/{call['id']}/end", headers=a)
    assert resp.status == 200
    await asyncio.wait_for(placed.ended.wait(), 5)
    assert placed.status == "canceled"
    assert ("POST", f"/2010-04-01/Accounts/{SID_A}/Calls/{placed.sid}.json") in fake.requests


async def test_the_fakes_media_socket_is_where_deliver_to_points(phone, fake):
    # The wss URL in the TwiML reaches the relay under test the way the callbacks do.
    assert fake.local("wss://relay.example.com/media/twilio?token=t").startswith("ws://127.0.0.1")
    assert fake.local("https://relay.example.com/x").startswith("http://127.0.0.1")
    assert fake.local("https://elsewhere.example/x") == "https://elsewhere.example/x"


async def test_another_account_learns_nothing_of_a_calls_transfer(phone, make_key, fake, database):
    a, b = await make_key("proj-a"), await make_key("proj-b")
    account_a = await add_account(phone, a, SID_A, TOKEN_A)
    await add_account(phone, b, SID_B, TOKEN_B)
    agent = await account_number(phone, a, account_a["id"], "+14155550101")
    fake.voice.unanswered.add(CALLEE)
    call = await place(phone, a, agent["id"])
    await inbound.telephony_event(
        database, call["id"], "transfer", level="info", data={"transfer": "+14155550188"}
    )
    path = f"/carriers/twilio/voice/after?callId={call['id']}"

    def asked_by(sid: str, token: str):
        form = {"AccountSid": sid, "CallSid": "CA1", "CallStatus": "in-progress"}
        signature = RequestValidator(token).compute_signature(PUBLIC_URL + path, form)
        return phone.post(path, data=form, headers={"X-Twilio-Signature": signature})

    resp = await asked_by(SID_B, TOKEN_B)
    assert resp.status == 200
    assert [c.tag for c in ET.fromstring(await resp.text())] == ["Hangup"]
    resp = await asked_by(SID_A, TOKEN_A)
    assert [(c.tag, c.text) for c in ET.fromstring(await resp.text())] == [("Dial", "+14155550188")]


async def test_twilio_hangs_up_an_answered_call_through_its_rest_api(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth)
    call = await place(phone, auth, agent["id"])
    await asyncio.wait_for(phone.app[MEDIA].engine.started.wait(), 8)
    await until(phone, auth, call["id"], "in_progress")
    [placed] = fake.voice.calls.values()
    await phone.app[APP_STATE].carriers.get("twilio").hangup(placed.sid)
    await asyncio.wait_for(placed.ended.wait(), 8)
    assert placed.status == "completed"
    assert (await until(phone, auth, call["id"], "completed"))["status"] == "completed"
