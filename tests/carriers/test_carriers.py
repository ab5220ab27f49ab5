"""The carrier seam as each carrier implements it, without the HTTP around it."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from relay.carriers import CarrierError, DialFailed, DialRequest, InboundWebhook, LegUpdate
from relay.carriers.sim import SimCarrier
from relay.carriers.sms import OutgoingText
from relay.carriers.twilio import TwilioCarrier, parse_call_status
from relay.handset.fake_twilio import FakeTwilio

TOKEN = "carrier-test-auth-token"
URL = "https://relay.example.com/carriers/twilio/sms?messageId=msg_1"
FORM = {"MessageSid": "SM1", "From": "+61412345678", "To": "+14155550142", "Body": "hi"}


def dial_request(carrier: str) -> DialRequest:
    return DialRequest(
        call_id="call_abc",
        project_id="prj_1",
        carrier=carrier,
        from_number="+14155550142",
        to_number="+14155550199",
        media_base_url="wss://relay.example.com",
        media_token="t",
        ring_timeout_seconds=30.0,
    )


def signed(form: dict[str, str], token: str = TOKEN) -> InboundWebhook:
    signature = RequestValidator(token).compute_signature(URL, form)
    return InboundWebhook(URL, {"X-Twilio-Signature": signature}, form=form)


def test_twilio_vouches_for_what_its_account_signed():
    twilio = TwilioCarrier("AC1", TOKEN)
    assert twilio.verify_webhook(signed(FORM))
    assert not twilio.verify_webhook(signed(FORM, token="another-account-token"))
    tampered = signed(FORM)
    assert not twilio.verify_webhook(
        InboundWebhook(URL, tampered.headers, form={**FORM, "Body": "changed"})
    )
    assert not twilio.verify_webhook(InboundWebhook(URL, {}, form=FORM))


def test_twilio_without_an_auth_token_vouches_for_nothing():
    assert not TwilioCarrier("AC1", "").verify_webhook(signed(FORM))


async def test_twilio_without_an_account_refuses_to_dial():
    with pytest.raises(CarrierError) as caught:
        await TwilioCarrier("", "").dial(dial_request("twilio"))
    assert "RELAY_TWILIO_ACCOUNT_SID" in str(caught.value)


async def test_a_sim_leg_is_accepted_and_hung_up():
    leg = await SimCarrier().dial(dial_request("sim"))
    assert leg.carrier_call_id == "SIMOUTabc"
    await leg.hangup()


def test_twilio_status_callbacks_say_how_a_leg_ended():
    assert parse_call_status({"CallSid": "CA1", "CallStatus": "ringing"}) == LegUpdate(
        "CA1", "ringing"
    )
    for status, reason in [
        ("busy", "busy"),
        ("no-answer", "no_answer"),
        ("failed", "provider_error"),
        ("canceled", "canceled"),
        ("completed", "provider_error"),
    ]:
        update = parse_call_status({"CallSid": "CA1", "CallStatus": status})
        assert update is not None and (update.status, update.reason) == ("ended", reason)
    for status in ("queued", "initiated", "in-progress", "nonsense", ""):
        assert parse_call_status({"CallSid": "CA1", "CallStatus": status}) is None
    assert parse_call_status({"CallStatus": "busy"}) is None


async def test_sim_texts_land_in_the_handsets_inbox():
    sim = SimCarrier()
    sent = await sim.send_sms(OutgoingText("msg_1", "+14155550142", "+12025550142", "Hello"))
    assert sent.status == "delivered"
    [text] = sim.inbox("+12025550142")
    assert (text.carrier_message_id, text.message_id, text.text) == (
        sent.carrier_message_id,
        "msg_1",
        "Hello",
    )
    assert sim.inbox("+12025550143") == []
    assert not sim.verify_webhook(InboundWebhook(URL, {}, form=FORM))


async def test_a_twilio_that_does_not_answer_in_time_fails_the_dial_network_timeout(
    aiohttp_server,
):
    fake = FakeTwilio("AC" + "1" * 32, TOKEN, stall_seconds=2.0)
    server = await aiohttp_server(fake.app())
    twilio = TwilioCarrier(
        fake.account_sid, TOKEN, api_base_url=str(server.make_url("")), timeout=0.3
    )
    try:
        with pytest.raises(DialFailed) as caught:
            await twilio.dial(dial_request("twilio"))
    finally:
        await twilio.close()
    assert caught.value.reason == "network_timeout"
    assert fake.requests == [("POST", f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json")]


async def test_the_sim_never_gives_an_agent_the_handsets_own_number():
    """The handset texts and calls from +1 202 555 0142 by default: were an agent given that
    number, a text from the handset would be a text to itself (a real flake, once)."""
    from relay.carriers.base import ProvisionRequest
    from relay.carriers.sim.carrier import DEFAULT_HANDSET, NoNumberAvailable, SimCarrier

    carrier = SimCarrier()
    taken: set[str] = set()
    with pytest.raises(NoNumberAvailable):
        for _ in range(101):
            request = ProvisionRequest("US", "202", frozenset(taken))
            taken.add((await carrier.provision(request)).phone_number)
    assert len(taken) == 99 and DEFAULT_HANDSET not in taken
