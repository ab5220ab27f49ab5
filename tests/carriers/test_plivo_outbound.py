"""Outbound Plivo calls at the carrier seam: ``PlivoCarrier.dial`` asks the fake Plivo's
Call API to ring the callee; the fake rings (signed ring callback), answers by asking the
relay's outbound answer URL and streaming the callee to the relay's audio socket, or ends
busy / unanswered / cancelled (signed hang-up callbacks, which the relay maps to failure
reasons); a Plivo 5xx or a Plivo that does not answer fails the dial.

The first tests go through ``POST /v1/calls`` and the dialler; the carrier-level ones open
the call row the way the dialler does (``connecting``, a media token)."""

from __future__ import annotations

import asyncio

import pytest

from relay.calls import inbound
from relay.calls.media import MEDIA
from relay.carriers import DialFailed, DialRequest
from relay.carriers.plivo import PlivoCarrier, PlivoCredentials, parse_call_status
from relay.state import APP_STATE
from relay.store.models import Number
from relay.urls import media_base_url
from tests.carriers.plivo_support import (
    AUTH_A,
    NUMBER_A,
    PUBLIC_URL,
    TOKEN_A,
    origin,
    plivo_agent,
    plivo_settings,
)
from tests.transports.support import ScriptedEngine, calls, wait_for

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


@pytest.fixture
async def carrier(plivo):
    base = PlivoCarrier(PlivoCredentials("", ""), api_base_url=plivo[1], public_url=PUBLIC_URL)
    made = base.for_account({"authId": AUTH_A, "authToken": TOKEN_A})
    yield made
    await made.close()


async def outbound_call(phone, auth) -> DialRequest:
    """An outbound call from NUMBER_A, opened as the dialler opens one (for the carrier-level
    tests below, which call ``PlivoCarrier.dial`` themselves)."""
    agent = await plivo_agent(phone, auth)
    state = phone.app[APP_STATE]
    async with state.db.session() as session:
        number = (await session.execute(Number.__table__.select())).first()
        number_row = await session.get(Number, number.id)
    opened = await inbound._open_for_media(
        state,
        project_id=number_row.project_id,
        agent_id=agent["id"],
        connection_type="plivo",
        number=number_row,
        from_number=NUMBER_A,
        to_number=CALLEE,
        direction="outbound",
    )
    return DialRequest(
        call_id=opened.call_id,
        project_id=opened.project_id,
        carrier="plivo",
        from_number=NUMBER_A,
        to_number=CALLEE,
        media_base_url=media_base_url(PUBLIC_URL),
        media_token=opened.media_token,
        ring_timeout_seconds=1,
    )


async def place(phone, auth) -> str:
    """``POST /v1/calls`` from NUMBER_A (a Plivo number of the project's account): the
    dialling queue hands it to the dialler, which dials through the account's Plivo."""
    agent = await plivo_agent(phone, auth)
    resp = await phone.post("/v1/calls", json={"agentId": agent["id"], "to": CALLEE}, headers=auth)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["id"]


async def call_row(database, call_id: str):
    [row] = [c for c in await calls(database) if c.id == call_id]
    return row


async def test_a_dialled_call_rings_is_answered_and_streams_the_callee(phone, auth, fake, database):
    call_id = await place(phone, auth)
    await wait_for(lambda: bool(fake.placed), within=10)
    [placed] = fake.placed
    assert (placed["auth_id"], placed["from"], placed["to"]) == (AUTH_A, NUMBER_A[1:], CALLEE[1:])
    query = f"authId={AUTH_A}&callId={call_id}"
    assert placed["answer_url"].startswith(
        f"{PUBLIC_URL}/carriers/plivo/voice/outbound?{query}&token="
    )
    assert (
        placed["ring_url"]
        == placed["hangup_url"]
        == (f"{PUBLIC_URL}/carriers/plivo/voice/status?{query}")
    )
    assert placed["answer_method"] == "POST"

    await asyncio.wait_for(fake.answered[placed["request_uuid"]].wait(), 10)
    engine = phone.app[MEDIA].engine
    await asyncio.wait_for(engine.started.wait(), 5)
    [scripted] = engine.calls
    assert scripted.call_id == call_id and scripted.setup.direction == "outbound"

    async def in_progress() -> bool:
        return (await call_row(database, call_id)).status == "in_progress"

    await wait_for(in_progress)
    row = await call_row(database, call_id)
    assert row.carrier_call_id == placed["request_uuid"]

    await scripted.line.hangup()  # the agent ends the call: hung up through the Call API
    await scripted.end()
    await wait_for(lambda: any(f.get("CallStatus") == "completed" for _, f, _ in fake.callbacks))
    [answered] = [c for c in fake.calls if c.call_uuid]
    assert answered.hung_up and answered.after is None
    assert ("DELETE", f"/v1/Account/{AUTH_A}/Call/{answered.call_uuid}/") in fake.requests

    async def completed() -> bool:
        return (await call_row(database, call_id)).status == "completed"

    await wait_for(completed)


@pytest.mark.parametrize(("callee_set", "reason"), [("busy", "busy"), ("unanswered", "no_answer")])
async def test_a_callee_that_does_not_answer_fails_the_call_with_its_reason(
    phone, auth, fake, database, callee_set, reason
):
    getattr(fake, callee_set).add(CALLEE)
    call_id = await place(phone, auth)

    async def ended() -> bool:
        return (await call_row(database, call_id)).status == "failed"

    await wait_for(ended, within=20)
    assert (await call_row(database, call_id)).failure_reason == reason


async def test_a_call_ended_while_it_rings_is_cancelled_at_plivo(phone, auth, fake, database):
    fake.unanswered.add(CALLEE)
    call_id = await place(phone, auth)
    await wait_for(lambda: len(fake.callbacks) >= 1, within=10)  # ringing
    [placed] = fake.placed
    resp = await phone.post(f"/v1/calls/{call_id}/end", headers=auth)
    assert resp.status in (200, 202), await resp.text()
    request = ("DELETE", f"/v1/Account/{AUTH_A}/Request/{placed['request_uuid']}/")
    await wait_for(lambda: request in fake.requests, within=10)

    async def canceled() -> bool:
        row = await call_row(database, call_id)
        return (row.status, row.failure_reason) == ("failed", "canceled")

    await wait_for(canceled, within=10)


async def test_a_plivo_5xx_fails_the_dial_with_provider_error(phone, auth, fake, carrier):
    fake.call_error = 500
    request = await outbound_call(phone, auth)
    with pytest.raises(DialFailed) as info:
        await carrier.dial(request)
    assert info.value.reason == "provider_error"


async def test_a_plivo_that_does_not_answer_fails_the_dial_with_network_timeout(
    phone, auth, fake, plivo
):
    fake.call_delay = 1.0
    base = PlivoCarrier(
        PlivoCredentials("", ""), api_base_url=plivo[1], public_url=PUBLIC_URL, timeout=0.2
    )
    slow = base.for_account({"authId": AUTH_A, "authToken": TOKEN_A})
    request = await outbound_call(phone, auth)
    with pytest.raises(DialFailed) as info:
        await slow.dial(request)
    assert info.value.reason == "network_timeout"
    await slow.close()


async def test_the_registrys_plivo_has_no_account_to_dial_with(phone, auth, plivo):
    base = PlivoCarrier(PlivoCredentials("", ""), api_base_url=plivo[1], public_url=PUBLIC_URL)
    request = await outbound_call(phone, auth)
    with pytest.raises(Exception, match="carrier account"):
        await base.dial(request)


async def test_an_answer_with_a_forged_token_streams_nothing(phone, auth, fake, database):
    request = await outbound_call(phone, auth)
    url = (
        f"{PUBLIC_URL}/carriers/plivo/voice/outbound?authId={AUTH_A}"
        f"&callId={request.call_id}&token=forged"
    )
    status, xml = await fake.post_for_text(url, {"CallUUID": "c-9", "CallStatus": "in-progress"})
    assert status == 200 and "<Stream" not in xml and "<Hangup" in xml


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"RequestUUID": "r", "CallStatus": "ringing"}, ("ringing", "")),
        ({"RequestUUID": "r", "CallStatus": "busy", "HangupCause": "USER_BUSY"}, ("ended", "busy")),
        ({"RequestUUID": "r", "CallStatus": "timeout"}, ("ended", "no_answer")),
        ({"RequestUUID": "r", "CallStatus": "cancel"}, ("ended", "canceled")),
        ({"RequestUUID": "r", "CallStatus": "failed"}, ("ended", "provider_error")),
        ({"RequestUUID": "r", "CallStatus": "in-progress"}, None),
        ({"CallStatus": "busy"}, None),
    ],
)
def test_plivos_call_statuses_map_onto_failure_reasons(form, expected):
    update = parse_call_status(form)
    assert (None if update is None else (update.status, update.reason)) == expected


async def voicemail_call(phone, auth, fake, database, setting):
    fake.machines.add(CALLEE)
    agent = await plivo_agent(phone, auth, voicemail=setting)
    resp = await phone.post("/v1/calls", json={"agentId": agent["id"], "to": CALLEE}, headers=auth)
    assert resp.status == 202, await resp.text()
    call_id = (await resp.json())["id"]

    async def completed() -> bool:
        return (await call_row(database, call_id)).status == "completed"

    await wait_for(completed, within=10)
    return await call_row(database, call_id), phone.app[MEDIA].engine.calls[0]


async def test_plivo_is_asked_for_amd_and_a_machine_is_hung_up_on(phone, auth, fake, database):
    from relay.calls.voicemail import HUNG_UP

    row, scripted = await voicemail_call(phone, auth, fake, database, {"action": "hangup"})
    [placed] = fake.placed
    assert (placed["machine_detection"], placed["machine_detection_method"]) == ("true", "POST")
    query = f"authId={AUTH_A}&callId={row.id}"
    assert placed["machine_detection_url"] == f"{PUBLIC_URL}/carriers/plivo/voice/amd?{query}"
    [verdict] = [f for u, f, _ in fake.callbacks if u == placed["machine_detection_url"]]
    assert verdict["Machine"] == "true"
    assert (row.answered_by, scripted.left) == ("machine", (None, HUNG_UP))


async def test_a_message_is_left_on_a_plivo_machine(phone, auth, fake, database):
    from relay.calls.voicemail import LEFT_MESSAGE

    setting = {"action": "leave_message", "message": "Please call the clinic back."}
    row, scripted = await voicemail_call(phone, auth, fake, database, setting)
    assert scripted.left == ("Please call the clinic back.", LEFT_MESSAGE)


async def test_a_plivo_amd_verdict_from_another_account_is_ignored(phone, auth, fake, database):
    from tests.carriers.plivo_support import AUTH_B, TOKEN_B, add_account

    fake.unanswered.add(CALLEE)
    call_id = await place(phone, auth)
    await wait_for(lambda: bool(fake.placed), within=10)
    await add_account(phone, auth, AUTH_B, TOKEN_B)
    # Account B (known to the relay) signs a verdict naming account A's call.
    url = f"{PUBLIC_URL}/carriers/plivo/voice/amd?authId={AUTH_B}&callId={call_id}"
    assert await fake.post(url, {"Machine": "true"}, fake.accounts[AUTH_B]) == 204
    unsigned = url.replace(AUTH_B, AUTH_A)  # A's URL, B's signature: refused outright
    assert await fake.post(unsigned, {"Machine": "true"}, fake.accounts[AUTH_B]) == 403
    assert (await call_row(database, call_id)).answered_by is None
