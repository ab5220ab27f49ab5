"""Twilio's voice webhooks: signature checks, the TwiML that connects a call, polite refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest

from relay import tokens
from relay.calls import inbound
from relay.carriers.twilio import NOT_IN_SERVICE, UNAVAILABLE
from relay.state import APP_STATE
from tests.transports.support import (
    PUBLIC_URL,
    agent_with_number,
    call_events,
    calls,
    deployment_number,
    lifecycle_types,
    phone_settings,
    twilio_post,
    twilio_signature,
    voice_params,
)

VOICE = "/carriers/twilio/voice"


@pytest.fixture
async def phone(database, app_client):
    return await app_client(phone_settings())


def stream_of(twiml: str) -> tuple[str, dict[str, str], str | None]:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    connect = root.find("Connect")
    assert connect is not None, twiml
    stream = connect.find("Stream")
    assert stream is not None, twiml
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return stream.get("url"), params, connect.get("action")


async def test_a_signed_call_to_a_bound_number_is_streamed_to_the_relay(phone, auth, database):
    agent, number = await agent_with_number(phone, auth, greeting="Hi, Ava here.")
    resp = await twilio_post(phone, VOICE, voice_params(number, sid="CA42"))
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    url, params, action = stream_of(await resp.text())

    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "relay.example.com", "/media/twilio")
    token = parse_qs(parts.query)["token"][0]
    assert params["token"] == token
    key = phone.app[APP_STATE].signing_key
    assert tokens.verify(key, token, "media") == params["callId"]
    assert action == f"{PUBLIC_URL}/carriers/twilio/voice/after?callId={params['callId']}"

    [call] = await calls(database)
    assert call.id == params["callId"]
    assert (call.status, call.direction, call.connection_type) == (
        "connecting",
        "inbound",
        "twilio",
    )
    assert (call.from_number, call.to_number, call.carrier_call_id) == (
        "+61412345678",
        number,
        "CA42",
    )
    assert call.agent_id == agent["id"]
    assert call.agent_snapshot["greeting"] == "Hi, Ava here."
    assert call.agent_snapshot["webhook_url"] == "http://127.0.0.1:9/hook"
    assert call.agent_snapshot["inactivity_timeout_seconds"] == 30  # a default, frozen too
    assert await lifecycle_types(database, call.id) == ["call.queued", "call.connecting"]


@pytest.mark.parametrize(
    "signature",
    [
        "",  # missing
        "bm90IGEgc2lnbmF0dXJl",  # garbage
        "signed-with-another-token",
    ],
)
async def test_a_request_twilio_did_not_sign_is_refused(phone, auth, database, signature):
    _, number = await agent_with_number(phone, auth)
    params = voice_params(number)
    if signature == "signed-with-another-token":
        signature = twilio_signature(VOICE, params, token="someone-elses-token")
    resp = await twilio_post(phone, VOICE, params, signature=signature)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert await calls(database) == []


async def test_a_tampered_parameter_breaks_the_signature(phone, auth, database):
    _, number = await agent_with_number(phone, auth)
    params = voice_params(number)
    signature = twilio_signature(VOICE, params)
    resp = await twilio_post(phone, VOICE, {**params, "From": "+15555550100"}, signature=signature)
    assert resp.status == 403
    assert await calls(database) == []


async def test_without_an_auth_token_nothing_is_accepted(app_client, auth, database):
    client = await app_client(phone_settings(twilio_auth_token=""))
    resp = await twilio_post(client, VOICE, voice_params("+14155550100"))
    assert resp.status == 403


async def test_shared_key_signatures_use_the_named_algorithm(app_client, make_key, database):
    client = await app_client(phone_settings(twilio_webhook_signing_key="shared-secret"))
    headers = await make_key("proj-a")
    _, number = await agent_with_number(client, headers)
    params = voice_params(number)
    data = PUBLIC_URL + VOICE + "".join(k + params[k] for k in sorted(params))
    mac = hmac.new(b"shared-secret", data.encode(), hashlib.sha256).digest()
    settings_header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    resp = await client.post(
        VOICE,
        data=params,
        headers={
            "X-Twilio-Signature": base64.b64encode(mac).decode(),
            "X-Twilio-Webhooks-Signature-Settings": settings_header,
        },
    )
    assert resp.status == 200, await resp.text()
    assert stream_of(await resp.text())[1]["callId"]

    # Without the settings header the auth token signs; with it, only the shared key does.
    resp = await twilio_post(client, VOICE, params, signature=twilio_signature(VOICE, params))
    assert resp.status == 200
    resp = await client.post(
        VOICE,
        data=params,
        headers={
            "X-Twilio-Signature": twilio_signature(VOICE, params),
            "X-Twilio-Webhooks-Signature-Settings": settings_header,
        },
    )
    assert resp.status == 403


def said_then_hung_up(twiml: str) -> str:
    root = ET.fromstring(twiml)
    assert [child.tag for child in root] == ["Say", "Hangup"], twiml
    return root[0].text or ""


async def test_an_unknown_number_hears_it_is_not_in_service(phone, auth, database):
    resp = await twilio_post(phone, VOICE, voice_params("+14155550199"))
    assert resp.status == 200
    assert said_then_hung_up(await resp.text()) == NOT_IN_SERVICE
    assert await calls(database) == []


async def test_a_number_without_an_agent_says_no_one_is_available(phone, auth, database):
    number = await deployment_number(phone, auth)
    resp = await twilio_post(phone, VOICE, voice_params(number))
    assert resp.status == 200
    assert said_then_hung_up(await resp.text()) == UNAVAILABLE
    assert await calls(database) == []


async def test_a_released_number_is_not_in_service(phone, auth, database):
    _, number = await agent_with_number(phone, auth)
    listed = await (await phone.get("/v1/numbers", headers=auth)).json()
    await phone.delete(f"/v1/numbers/{listed['data'][0]['id']}", headers=auth)
    resp = await twilio_post(phone, VOICE, voice_params(number))
    assert said_then_hung_up(await resp.text()) == NOT_IN_SERVICE


async def test_after_the_stream_a_requested_transfer_is_dialled(phone, auth, database):
    _, number = await agent_with_number(phone, auth)
    resp = await twilio_post(phone, VOICE, voice_params(number))
    call_id = stream_of(await resp.text())[1]["callId"]
    path = f"/carriers/twilio/voice/after?callId={call_id}"
    params = {"CallSid": "CA0001", "AccountSid": "AC0001"}

    resp = await twilio_post(phone, path, params)
    assert [c.tag for c in ET.fromstring(await resp.text())] == ["Hangup"]

    await inbound.telephony_event(
        database, call_id, "transfer", level="info", data={"transfer": "+61255501234"}
    )
    resp = await twilio_post(phone, path, params)
    root = ET.fromstring(await resp.text())
    assert [(c.tag, c.text) for c in root] == [("Dial", "+61255501234")]
    assert [e.message for e in await call_events(database, call_id, "telephony")] == ["transfer"]

    resp = await twilio_post(phone, path, params, signature="forged")
    assert resp.status == 403


async def test_a_transfer_to_a_sip_address_is_dialled_with_sip(phone, auth, database):
    _, number = await agent_with_number(phone, auth)
    resp = await twilio_post(phone, VOICE, voice_params(number))
    call_id = stream_of(await resp.text())[1]["callId"]
    await inbound.telephony_event(
        database, call_id, "transfer", level="info", data={"transfer": "sip:desk@example.com"}
    )
    path = f"/carriers/twilio/voice/after?callId={call_id}"
    resp = await twilio_post(phone, path, {"CallSid": "CA0001", "AccountSid": "AC0001"})
    [dial] = ET.fromstring(await resp.text())
    assert dial.tag == "Dial" and not (dial.text or "").strip()
    assert [(c.tag, c.text) for c in dial] == [("Sip", "sip:desk@example.com")]


async def test_a_replayed_voice_request_never_opens_a_second_call(phone, auth, database):
    _, number = await agent_with_number(phone, auth)
    first = await twilio_post(phone, VOICE, voice_params(number, sid="CA77"))
    again = await twilio_post(phone, VOICE, voice_params(number, sid="CA77"))
    assert first.status == again.status == 200
    _, first_params, _ = stream_of(await first.text())
    _, again_params, _ = stream_of(await again.text())
    # A retry while the call waits for its media answers for the same call.
    assert again_params["callId"] == first_params["callId"]
    assert [c.id for c in await calls(database)] == [first_params["callId"]]

    await inbound.begin(database, first_params["callId"], node_id="node-a")
    replayed = await twilio_post(phone, VOICE, voice_params(number, sid="CA77"))
    assert UNAVAILABLE in await replayed.text() and "<Connect" not in await replayed.text()
    assert [c.id for c in await calls(database)] == [first_params["callId"]]


async def test_a_signed_field_holding_a_nul_is_refused_and_opens_no_call(phone, auth, database):
    """Twilio's signature proves who sent a form, not that PostgreSQL can store it."""
    _, number = await agent_with_number(phone, auth)
    resp = await twilio_post(phone, VOICE, voice_params(number, frm="+6141\x00"))
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_text", "From")
    assert await calls(database) == []
    path = "/carriers/twilio/voice/after?callId=call_%00"
    resp = await twilio_post(phone, path, {"CallSid": "CA0001", "AccountSid": "AC0001"})
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "invalid_text"
