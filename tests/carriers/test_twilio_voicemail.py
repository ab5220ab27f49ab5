"""Answering machines on outbound Twilio calls: the agent's ``voicemail`` setting (validated),
the AMD parameters of the Calls request, Twilio's signed AsyncAmdStatusCallback, the stored
``answeredBy``, and the call hung up or its message left when a machine answered.

The engine behind the media socket is scripted (tests/transports/support.py): ``leave`` is
what the relay asked of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from relay.calls.media import MEDIA
from relay.calls.voicemail import HUNG_UP, LEFT_MESSAGE
from relay.config import Settings
from relay.secretbox import new_key
from tests.conftest import DEPLOYMENT_SID, deployment_twilio
from tests.transports.support import ScriptedEngine, agent_with_number

PUBLIC_URL = "https://relay.example.com"
CALLEE = "+14155550123"
AMD = "/carriers/twilio/voice/amd"
MESSAGE = "Hi, this is Ava from the clinic. Please call us back."


@pytest.fixture
def fake(twilio_rest):
    return twilio_rest[0]


@pytest.fixture
def settings(twilio_rest) -> Settings:
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
    client.app[MEDIA].engine = ScriptedEngine()
    fake.deliver_to = (PUBLIC_URL, str(client.make_url("")).rstrip("/"))
    yield client
    for call in fake.voice.calls.values():
        call.hangup.set()
    await fake.settle()


async def place(client, auth, agent_id: str) -> str:
    resp = await client.post("/v1/calls", json={"agentId": agent_id, "to": CALLEE}, headers=auth)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["id"])


async def until(client, auth, call_id: str, check, within: float = 8.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        call = await (await client.get(f"/v1/calls/{call_id}", headers=auth)).json()
        if check(call):
            return call
        assert time.monotonic() < deadline, call
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("voicemail", "code"),
    [
        ({"action": "leave_message"}, "voicemail_message_required"),
        ({"action": "leave_message", "message": "   "}, "voicemail_message_required"),
        ({"action": "leave_message", "message": "x" * 1001}, "string_too_long"),
        ({"action": "hangup", "message": "hello"}, "voicemail_message_unused"),
        ({"action": "record"}, "literal_error"),
        ("hangup", "model_type"),
    ],
)
async def test_a_bad_voicemail_setting_is_refused_with_a_stable_code(client, auth, voicemail, code):
    body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook", "voicemail": voicemail}
    resp = await client.post("/v1/agents", json=body, headers=auth)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert code in {error["code"], *(d.get("code") for d in error.get("details", []))}, error
    listed = await (await client.get("/v1/agents", headers=auth)).json()
    assert listed["data"] == []  # nothing half-stored


async def test_the_voicemail_setting_is_stored_patched_and_cleared(client, auth):
    body = {
        "name": "Ava",
        "webhookUrl": "http://127.0.0.1:9/hook",
        "voicemail": {"action": "hangup"},
    }
    agent = await (await client.post("/v1/agents", json=body, headers=auth)).json()
    assert agent["voicemail"] == {"action": "hangup"}
    patch = {"voicemail": {"action": "leave_message", "message": MESSAGE}}
    resp = await client.patch(f"/v1/agents/{agent['id']}", json=patch, headers=auth)
    assert (await resp.json())["voicemail"] == {"action": "leave_message", "message": MESSAGE}
    resp = await client.patch(f"/v1/agents/{agent['id']}", json={"voicemail": None}, headers=auth)
    assert (await resp.json())["voicemail"] is None


async def test_twilio_is_asked_for_amd_only_when_the_agent_has_voicemail(phone, auth, fake):
    fake.voice.unanswered.add(CALLEE)
    plain, _ = await agent_with_number(phone, auth)
    with_vm, _ = await agent_with_number(phone, auth, voicemail={"action": "hangup"})
    first = await place(phone, auth, plain["id"])
    second = await place(phone, auth, with_vm["id"])
    await until(phone, auth, first, lambda c: c["status"] == "ringing")
    await until(phone, auth, second, lambda c: c["status"] == "ringing")
    by_call = {
        c.form["StatusCallback"].rsplit("=", 1)[1]: c.form for c in fake.voice.calls.values()
    }
    assert "MachineDetection" not in by_call[first] and "AsyncAmd" not in by_call[first]
    form = by_call[second]
    assert (form["MachineDetection"], form["AsyncAmd"]) == ("DetectMessageEnd", "true")
    assert form["AsyncAmdStatusCallback"] == f"{PUBLIC_URL}{AMD}?callId={second}"
    assert form["AsyncAmdStatusCallbackMethod"] == "POST"


async def answered_by_machine(phone, auth, fake, voicemail: dict[str, Any]):
    fake.voice.machines.add(CALLEE)
    agent, _ = await agent_with_number(phone, auth, voicemail=voicemail)
    call_id = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    done = await until(phone, auth, call_id, lambda c: c["status"] == "completed")
    [placed] = fake.voice.calls.values()
    return done, engine.calls[0], placed


async def test_a_machine_is_hung_up_on_when_the_agent_says_hangup(phone, auth, fake):
    done, scripted, placed = await answered_by_machine(phone, auth, fake, {"action": "hangup"})
    assert done["answeredBy"] == "machine" and done["failureReason"] is None
    assert scripted.left == (None, HUNG_UP)
    assert placed.amd_callbacks == [("machine_end_beep", 204)]
    await asyncio.wait_for(placed.ended.wait(), 8)
    assert {"Status": "completed"} in placed.updates  # hung up at Twilio
    events = [e["message"] for e in done["events"]]
    assert "answering machine detection: machine (greeting over)" in events
    assert HUNG_UP in events


async def test_a_message_is_left_after_the_beep_when_the_agent_says_leave_message(
    phone, auth, fake
):
    setting = {"action": "leave_message", "message": MESSAGE}
    done, scripted, _ = await answered_by_machine(phone, auth, fake, setting)
    assert done["answeredBy"] == "machine"
    assert scripted.left == (MESSAGE, LEFT_MESSAGE)
    assert LEFT_MESSAGE in [e["message"] for e in done["events"]]


async def test_a_human_is_recorded_and_the_call_goes_on(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth, voicemail={"action": "hangup"})
    call_id = await place(phone, auth, agent["id"])
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 8)
    live = await until(phone, auth, call_id, lambda c: c["answeredBy"] is not None)
    assert (live["answeredBy"], live["status"]) == ("human", "in_progress")
    assert engine.calls[0].left is None


async def test_a_call_without_voicemail_has_no_answered_by(phone, auth, fake):
    agent, _ = await agent_with_number(phone, auth)
    call_id = await place(phone, auth, agent["id"])
    await asyncio.wait_for(phone.app[MEDIA].engine.started.wait(), 8)
    await asyncio.sleep(fake.voice.amd_seconds + 0.2)
    live = await until(phone, auth, call_id, lambda c: c["status"] == "in_progress")
    assert live["answeredBy"] is None
    [placed] = fake.voice.calls.values()
    assert placed.amd_callbacks == []


async def test_a_forged_amd_callback_is_refused_and_changes_nothing(phone, auth, fake):
    fake.voice.unanswered.add(CALLEE)
    agent, _ = await agent_with_number(phone, auth, voicemail={"action": "hangup"})
    call_id = await place(phone, auth, agent["id"])
    await until(phone, auth, call_id, lambda c: c["status"] == "ringing")
    path = f"{AMD}?callId={call_id}"
    form = {"AccountSid": DEPLOYMENT_SID, "CallSid": "CA1", "AnsweredBy": "machine_end_beep"}
    forged = RequestValidator("not-the-token").compute_signature(PUBLIC_URL + path, form)
    resp = await phone.post(path, data=form, headers={"X-Twilio-Signature": forged})
    assert resp.status == 403
    call = await until(phone, auth, call_id, lambda c: True)
    assert (call["answeredBy"], call["status"]) == (None, "ringing")
