"""A live Plivo call through Plivo's Call API: the API's end and the agent's hang-up are
``DELETE Call/{uuid}/``, a transfer is ``POST Call/{uuid}/`` to the relay's ``<Dial>``
document, digits are ``POST Call/{uuid}/DTMF/``; a refusal is on the call's event log and
the call still ends (the stream's ``<Redirect>`` hangs up or dials)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from relay.calls.media import MEDIA
from tests.carriers.plivo_support import AUTH_A, PUBLIC_URL, origin, plivo_agent, plivo_settings
from tests.transports.support import ScriptedEngine, call_events, calls, wait_for

CALLEE = "+14155550177"


@pytest.fixture
async def phone(database, app_client, plivo):
    client = await app_client(plivo_settings(plivo[1], outbound_ring_timeout_seconds=5))
    client.app[MEDIA].engine = ScriptedEngine()
    plivo[0].deliver_to = (PUBLIC_URL, origin(client))
    return client


@pytest.fixture
def fake(plivo):
    return plivo[0]


async def answered(phone, auth, fake):
    """An outbound call from the project's Plivo number, answered and streaming: (the relay's
    call id, the scripted engine's call, the fake's record of it)."""
    agent = await plivo_agent(phone, auth)
    resp = await phone.post("/v1/calls", json={"agentId": agent["id"], "to": CALLEE}, headers=auth)
    assert resp.status == 202, await resp.text()
    call_id = (await resp.json())["id"]
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 10)
    [scripted] = engine.calls
    [streamed] = fake.calls
    return call_id, scripted, streamed


async def status_of(database, call_id: str) -> str:
    [row] = [c for c in await calls(database) if c.id == call_id]
    return row.status


def completed(database, call_id: str):
    async def check() -> bool:
        return await status_of(database, call_id) == "completed"

    return check


async def telephony(database, call_id: str) -> list[str]:
    return [e.message for e in await call_events(database, call_id, "telephony")]


async def test_the_api_ends_a_live_plivo_call_with_the_call_api(phone, auth, fake, database):
    call_id, _, streamed = await answered(phone, auth, fake)
    resp = await phone.post(f"/v1/calls/{call_id}/end", headers=auth)
    assert resp.status == 200
    path = f"/v1/Account/{AUTH_A}/Call/{streamed.call_uuid}/"
    await wait_for(lambda: ("DELETE", path) in fake.requests)
    await wait_for(completed(database, call_id))


async def test_a_live_transfer_moves_the_call_to_the_relays_dial(phone, auth, fake, database):
    call_id, scripted, streamed = await answered(phone, auth, fake)
    await scripted.line.transfer("+14155550188")
    await scripted.end()
    path = f"/v1/Account/{AUTH_A}/Call/{streamed.call_uuid}/"
    assert ("POST", path) in fake.requests
    assert streamed.transferred
    number = ET.fromstring(streamed.after or "").find("Dial/Number")
    assert number is not None and number.text == "14155550188"
    await wait_for(completed(database, call_id))
    assert ("DELETE", path) not in fake.requests  # the transferred call is not hung up


async def test_digits_go_through_plivos_dtmf_api(phone, auth, fake):
    _, scripted, streamed = await answered(phone, auth, fake)
    await scripted.line.send_dtmf("12#")
    assert streamed.digits == ["12#"]
    assert ("POST", f"/v1/Account/{AUTH_A}/Call/{streamed.call_uuid}/DTMF/") in fake.requests
    [callee] = fake.callees.values()
    await asyncio.sleep(0.3)
    assert not callee.heard_loud.is_set()  # not also played as tones


async def test_a_refused_hangup_is_logged_and_the_call_still_ends(phone, auth, fake, database):
    call_id, _, streamed = await answered(phone, auth, fake)
    fake.control_error = 500
    resp = await phone.post(f"/v1/calls/{call_id}/end", headers=auth)
    assert resp.status == 200

    await wait_for(completed(database, call_id))
    # The stream closed anyway: Plivo followed the <Redirect>, answered with a hang-up.
    await wait_for(lambda: streamed.after is not None)
    assert "<Hangup" in (streamed.after or "") and not streamed.transferred
    logged = await telephony(database, call_id)
    assert any(m.startswith("the carrier refused hangup") for m in logged), logged


async def test_refused_digits_are_logged_and_played_as_tones(phone, auth, fake, database):
    call_id, scripted, streamed = await answered(phone, auth, fake)
    fake.control_error = 500
    await scripted.line.send_dtmf("5")
    assert streamed.digits == []
    [callee] = fake.callees.values()
    await asyncio.wait_for(callee.heard_loud.wait(), 5)  # the tones, in the stream
    logged = await telephony(database, call_id)
    assert any(m.startswith("the carrier refused send_dtmf") for m in logged), logged
