"""Outbound calls through Telnyx Call Control, on the wire: the relay's ``POST /v2/calls``
(on the number's own account and application, with a bidirectional PCMU stream), Telnyx's
signed ``call.hangup`` ending a ringing leg with its cause, the relay cancelling a leg, and
the media socket the fake Telnyx opens when the callee answers. The engine is scripted here;
real speech is in test_telnyx_calls.py."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from relay import tokens
from relay.calls.media import MEDIA
from relay.config import Settings
from relay.handset.fake_telnyx import BUSY, NO_ANSWER, REJECT
from relay.state import APP_STATE
from relay.store.models import Call
from tests.carriers.telnyx_support import NUMBER_A, bound_number, deliver_to_relay
from tests.transports.support import ScriptedEngine, wait_for

CALLEE = "+14155550123"


@pytest.fixture
def settings(telnyx_settings) -> Settings:
    return telnyx_settings.model_copy(update={"outbound_ring_timeout_seconds": 5})


@pytest.fixture
async def phone(client, fake):
    client.app[MEDIA].engine = ScriptedEngine()
    deliver_to_relay(fake, client)
    yield client
    for call in fake.calls.values():
        call.alive = False
        call.done.set()
    await fake.settle()


async def place(client, auth, agent_id: str, to: str = CALLEE) -> dict[str, Any]:
    resp = await client.post("/v1/calls", json={"agentId": agent_id, "to": to}, headers=auth)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def until(client, auth, call_id: str, status: str, within: float = 8.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        call = await (await client.get(f"/v1/calls/{call_id}", headers=auth)).json()
        if call["status"] == status:
            return call
        assert time.monotonic() < deadline, call
        await asyncio.sleep(0.02)


def dials(fake) -> list[dict]:
    return [b for m, p, b in fake.requests if (m, p) == ("POST", "/v2/calls")]


def hangups(fake) -> list[str]:
    return [p for _, p, _ in fake.requests if p.endswith("/actions/hangup")]


async def test_the_relay_dials_on_the_numbers_account_with_a_stream_to_itself(
    phone, auth, fake, account_a, database
):
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")
    [body] = dials(fake)
    assert (body["to"], body["from"], body["connection_id"]) == (
        CALLEE,
        NUMBER_A,
        account_a.connection_id,
    )
    assert (body["stream_track"], body["stream_bidirectional_mode"]) == ("inbound_track", "rtp")
    assert body["stream_bidirectional_codec"] == "PCMU"
    assert body["timeout_secs"] == 5
    assert body["webhook_url"] == "https://relay.example.com/carriers/telnyx/call"
    url = urlsplit(body["stream_url"])
    assert (url.scheme, url.netloc, url.path) == ("wss", "relay.example.com", "/media/telnyx")
    key = phone.app[APP_STATE].signing_key
    assert tokens.verify(key, parse_qs(url.query)["token"][0], "media") == call["id"]
    assert base64.b64decode(body["client_state"]).decode() == call["id"]
    [placed] = fake.calls.values()
    async with database.session() as session:
        row = await session.get(Call, call["id"])
    assert row.carrier_call_id == placed.call_control_id


@pytest.mark.parametrize(
    ("behaviour", "reason"), [(BUSY, "busy"), (REJECT, "busy"), (NO_ANSWER, "no_answer")]
)
async def test_a_leg_telnyx_hangs_up_fails_the_call_with_its_cause(
    phone, auth, fake, account_a, behaviour, reason
):
    fake.callees[CALLEE] = behaviour
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    call = await place(phone, auth, agent["id"])
    done = await until(phone, auth, call["id"], "failed", within=12)
    assert done["failureReason"] == reason


async def test_telnyx_failing_or_silent_fails_the_call(phone, auth, fake, account_a):
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    fake.dial_fails.add(CALLEE)
    done = await until(phone, auth, (await place(phone, auth, agent["id"]))["id"], "failed")
    assert done["failureReason"] == "provider_error"
    fake.dial_hangs.add("+14155550124")
    call = await place(phone, auth, agent["id"], "+14155550124")
    done = await until(phone, auth, call["id"], "failed", within=15)
    assert done["failureReason"] == "network_timeout"


async def test_a_call_ended_while_it_rings_is_cancelled_at_telnyx(phone, auth, fake, account_a):
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")
    resp = await phone.post(f"/v1/calls/{call['id']}/end", headers=auth)
    assert resp.status in (200, 202), await resp.text()
    done = await until(phone, auth, call["id"], "failed")
    assert done["failureReason"] == "canceled"
    [placed] = fake.calls.values()
    await wait_for(lambda: hangups(fake) == [f"/v2/calls/{placed.call_control_id}/actions/hangup"])
    await fake.settle()
    assert placed.hangup_cause == "originator_cancel"


async def test_an_answered_call_goes_in_progress_on_its_media_socket(phone, auth, fake, account_a):
    from relay.handset import SimHandset

    fake.handset = SimHandset("http://unused", "unused", listen=False, voice="espeak")
    fake.callees[CALLEE] = []  # answers, says nothing, hangs up once the agent is quiet
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "in_progress")
    engine = phone.app[MEDIA].engine
    [scripted] = engine.calls
    assert scripted.setup.direction == "outbound"
    await scripted.end("completed")  # the agent hangs up: ended at Telnyx too
    await until(phone, auth, call["id"], "completed")
    [placed] = fake.calls.values()
    await wait_for(lambda: hangups(fake) == [f"/v2/calls/{placed.call_control_id}/actions/hangup"])


async def voicemail_call(phone, auth, fake, account_a, setting: dict[str, Any]):
    """An outbound call answered by the number's answering machine, whose agent has
    ``voicemail``: (the call once completed, the scripted engine's call, Telnyx's record)."""
    from relay.handset import SimHandset

    fake.handset = SimHandset("http://unused", "unused", listen=False, voice="espeak")
    fake.callees[CALLEE] = []
    fake.machines.add(CALLEE)
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    resp = await phone.patch(f"/v1/agents/{agent['id']}", json={"voicemail": setting}, headers=auth)
    assert resp.status == 200, await resp.text()
    call = await place(phone, auth, agent["id"])
    done = await until(phone, auth, call["id"], "completed")
    [placed] = fake.calls.values()
    return done, phone.app[MEDIA].engine.calls[0], placed


async def test_a_machine_answering_a_telnyx_call_is_hung_up_on(phone, auth, fake, account_a):
    from relay.calls.voicemail import HUNG_UP

    done, scripted, placed = await voicemail_call(
        phone, auth, fake, account_a, {"action": "hangup"}
    )
    [dial] = dials(fake)
    assert dial["answering_machine_detection"] == "detect_beep"
    assert done["answeredBy"] == "machine" and scripted.left == (None, HUNG_UP)
    await wait_for(lambda: hangups(fake) == [f"/v2/calls/{placed.call_control_id}/actions/hangup"])


async def test_a_message_is_left_on_a_telnyx_machine_after_the_beep(phone, auth, fake, account_a):
    from relay.calls.voicemail import LEFT_MESSAGE

    setting = {"action": "leave_message", "message": "Please call the clinic back."}
    done, scripted, _ = await voicemail_call(phone, auth, fake, account_a, setting)
    assert scripted.left == ("Please call the clinic back.", LEFT_MESSAGE)
    events = [e["message"] for e in done["events"] if e["source"] == "telephony"]
    # The verdict alone does not leave it: the greeting's end (the beep) does.
    assert events[:2] == [
        "answering machine detection: machine",
        "answering machine detection: machine (greeting over)",
    ]
    received = [w[0] for w in fake.webhooks]
    assert received.index("call.machine.greeting.ended") > received.index(
        "call.machine.detection.ended"
    )


async def test_a_telnyx_amd_event_for_another_leg_changes_nothing(phone, auth, fake, account_a):
    agent, _, _ = await bound_number(phone, auth, fake, account_a, NUMBER_A)
    fake.callees[CALLEE] = NO_ANSWER
    call = await place(phone, auth, agent["id"])
    await until(phone, auth, call["id"], "ringing")
    payload = {
        "call_control_id": "v3:another-leg",
        "connection_id": account_a.connection_id,
        "client_state": base64.b64encode(call["id"].encode()).decode(),
        "result": "machine",
    }
    url = "https://relay.example.com/carriers/telnyx/call"
    assert await fake.post_webhook(account_a, url, "call.machine.detection.ended", payload) == 200
    assert (await until(phone, auth, call["id"], "ringing"))["answeredBy"] is None
