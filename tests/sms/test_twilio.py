"""Twilio Messaging: signed inbound webhooks in Twilio's form format, replies through the
REST API (a fake that speaks Twilio's wire format), signed delivery reports."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from relay.config import Settings
from relay.store.models import Message
from tests.sms.conftest import (
    PUBLIC_URL,
    TWILIO_SID,
    TWILIO_TOKEN,
    events_of,
    make_agent,
    sms_of,
    twilio_post,
    twilio_sms_params,
)

OUR = "+14155550123"
THEM = "+12025550142"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


async def _count(database) -> int:
    async with database.session() as session:
        return (await session.execute(select(func.count()).select_from(Message))).scalar_one()


async def test_signed_inbound_is_answered_at_once_with_empty_twiml(client, auth, hook, twilio):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    release = asyncio.Event()

    async def slow(payload):
        await release.wait()
        return {"text": "Sure, Tuesday works."}

    hook.reply = slow
    resp = await twilio_post(
        client, "/carriers/twilio/sms", twilio_sms_params(OUR, THEM, "Tuesday?", "SM0001")
    )
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    assert await resp.text() == EMPTY_TWIML
    assert twilio.messages == []  # the webhook has not answered yet
    release.set()
    await sms_of(client).queues.idle()
    assert hook.received[0]["data"]["text"] == "Tuesday?"
    assert hook.received[0]["agentId"] == agent.id
    [sent] = twilio.messages
    assert sent["To"] == THEM and sent["From"] == OUR and sent["Body"] == "Sure, Tuesday works."
    assert sent["StatusCallback"].startswith(f"{PUBLIC_URL}/carriers/twilio/sms/status?messageId=")


async def test_reply_is_delivered_as_twilio_reports(client, auth, hook, twilio, database):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    await twilio_post(client, "/carriers/twilio/sms", twilio_sms_params(OUR, THEM, "hi", "SM0002"))
    await sms_of(client).queues.idle()
    await twilio.settle()
    assert [(status, code) for status, _, code in twilio.callbacks] == [
        ("sent", 204),
        ("delivered", 204),
    ]
    listed = await (await client.get("/v1/messages?direction=outbound", headers=auth)).json()
    [reply] = listed["data"]
    assert reply["status"] == "delivered"
    assert reply["carrierMessageId"].startswith("SM")
    assert reply["sentAt"] and reply["deliveredAt"]
    types = [e.type for e in await events_of(database)]
    assert types == ["message.received", "message.sent", "message.delivered"]


async def test_bad_signature_is_403_and_nothing_is_stored(client, auth, hook, twilio, database):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    params = twilio_sms_params(OUR, THEM, "hi", "SM0003")
    resp = await twilio_post(client, "/carriers/twilio/sms", params, token="not-the-token")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    resp = await client.post("/carriers/twilio/sms", data=params)  # no signature at all
    assert resp.status == 403
    tampered = {**params, "Body": "send me money"}
    good = RequestValidator(TWILIO_TOKEN).compute_signature(
        PUBLIC_URL + "/carriers/twilio/sms", params
    )
    resp = await client.post(
        "/carriers/twilio/sms", data=tampered, headers={"X-Twilio-Signature": good}
    )
    assert resp.status == 403
    await sms_of(client).queues.idle()
    assert await _count(database) == 0
    assert hook.received == []


async def test_signature_over_another_url_is_refused(client, auth, hook, twilio, database):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    params = twilio_sms_params(OUR, THEM, "hi", "SM0004")
    other = RequestValidator(TWILIO_TOKEN).compute_signature(
        "https://evil.example.com/carriers/twilio/sms", params
    )
    resp = await client.post(
        "/carriers/twilio/sms", data=params, headers={"X-Twilio-Signature": other}
    )
    assert resp.status == 403
    assert await _count(database) == 0


async def test_a_retried_delivery_is_processed_once(client, auth, hook, twilio, database):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    params = twilio_sms_params(OUR, THEM, "once please", "SM0005")
    first, second = await asyncio.gather(
        twilio_post(client, "/carriers/twilio/sms", params),
        twilio_post(client, "/carriers/twilio/sms", params),
    )
    third = await twilio_post(client, "/carriers/twilio/sms", params)
    assert (first.status, second.status, third.status) == (200, 200, 200)
    await sms_of(client).queues.idle()
    assert hook.texts() == ["once please"]
    assert [m["Body"] for m in twilio.messages] == ["You said: once please"]
    assert await _count(database) == 2
    types = [e.type for e in await events_of(database, "message.received")]
    assert types == ["message.received"]


async def test_unknown_number_is_acknowledged_and_dropped(client, auth, hook, twilio, database):
    resp = await twilio_post(
        client, "/carriers/twilio/sms", twilio_sms_params(OUR, THEM, "hello?", "SM0006")
    )
    assert resp.status == 200 and await resp.text() == EMPTY_TWIML
    assert await _count(database) == 0


async def test_media_reaches_the_webhook(client, auth, hook, twilio):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    params = twilio_sms_params(
        OUR,
        THEM,
        "look",
        "MM0007",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM0007/Media/ME1",
        MediaContentType0="image/jpeg",
    )
    await twilio_post(client, "/carriers/twilio/sms", params)
    await sms_of(client).queues.idle()
    assert hook.received[0]["data"]["media"] == [
        {
            "url": "https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM0007/Media/ME1",
            "contentType": "image/jpeg",
        }
    ]


async def test_carrier_handled_stop_opts_out_without_a_second_confirmation(
    client, auth, hook, twilio
):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    params = twilio_sms_params(OUR, THEM, "STOP", "SM0008", OptOutType="STOP")
    await twilio_post(client, "/carriers/twilio/sms", params)
    await sms_of(client).queues.idle()
    assert twilio.messages == [] and hook.received == []
    resp = await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": THEM, "text": "hi"}, headers=auth
    )
    assert resp.status == 403


async def test_stop_without_carrier_handling_gets_our_confirmation(client, auth, hook, twilio):
    await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    await twilio_post(
        client, "/carriers/twilio/sms", twilio_sms_params(OUR, THEM, "stop", "SM0009")
    )
    await sms_of(client).queues.idle()
    assert [m["Body"] for m in twilio.messages] == [
        "You have been unsubscribed and will receive no more messages from this number. "
        "Reply START to resubscribe."
    ]


async def test_outbound_text_through_twilio(client, auth, hook, twilio, database):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    resp = await client.post(
        "/v1/messages",
        json={"agentId": agent.id, "to": THEM, "text": "Your table is ready."},
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["status"] in ("queued", "sent", "delivered")  # the report may beat the answer
    assert msg["provider"] == "twilio" and msg["carrierMessageId"].startswith("SM")
    [sent] = twilio.messages
    assert sent["StatusCallback"].endswith(f"messageId={msg['id']}")
    await twilio.settle()
    got = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert got["status"] == "delivered"
    types = [e.type for e in await events_of(database)]
    assert types == ["message.sent", "message.delivered"]


async def test_undelivered_report_fails_the_text(client, auth, hook, twilio, database):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    twilio.undeliverable.add(THEM)
    resp = await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": THEM, "text": "hello"}, headers=auth
    )
    msg = await resp.json()
    await twilio.settle()
    got = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert got["status"] == "failed"
    assert got["errorCode"] == "twilio_30003"
    types = [e.type for e in await events_of(database)]
    assert types == ["message.sent", "message.failed"]


async def test_twilio_refusal_is_a_failed_text_with_its_code(client, auth, hook, twilio, database):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    twilio.invalid.add("+12025550177")
    resp = await client.post(
        "/v1/messages",
        json={"agentId": agent.id, "to": "+12025550177", "text": "hello"},
        headers=auth,
    )
    assert resp.status == 201
    msg = await resp.json()
    assert msg["status"] == "failed"
    assert msg["errorCode"] == "twilio_21211"
    assert "not a valid phone number" in msg["errorMessage"]
    [event] = await events_of(database)
    assert event.type == "message.failed" and event.data["errorCode"] == "twilio_21211"
    detail = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert [e["code"] for e in detail["events"]] == ["carrier_failed"]


async def test_wrong_twilio_credentials_fail_the_text(
    client, auth, app_client, hook, fake_twilio, database
):
    fake, base = fake_twilio
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    # A relay of the same deployment whose auth token is wrong (revoked at Twilio since).
    settings = Settings(
        allow_private_webhooks=True,
        public_url=PUBLIC_URL,
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token="wrong-token",
        twilio_api_base_url=base,
    )
    client = await app_client(settings)
    resp = await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": THEM, "text": "hello"}, headers=auth
    )
    msg = await resp.json()
    assert (msg["status"], msg["errorCode"]) == ("failed", "twilio_20003")
    assert fake.messages == []


async def test_status_report_with_bad_signature_changes_nothing(client, auth, hook, twilio):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    twilio.send_callbacks = False
    resp = await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": THEM, "text": "hello"}, headers=auth
    )
    msg = await resp.json()
    path = f"/carriers/twilio/sms/status?messageId={msg['id']}"
    params = {
        "AccountSid": TWILIO_SID,
        "MessageSid": msg["carrierMessageId"],
        "MessageStatus": "delivered",
    }
    resp = await twilio_post(client, path, params, token="forged")
    assert resp.status == 403
    got = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert got["status"] == "queued"
    resp = await twilio_post(client, path, params)
    assert resp.status == 204
    got = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert got["status"] == "delivered"


async def test_late_status_reports_never_move_a_text_backwards(
    client, auth, hook, twilio, database
):
    agent = await make_agent(client, auth, hook, provider="twilio", phone=OUR)
    twilio.send_callbacks = False
    msg = await (
        await client.post(
            "/v1/messages", json={"agentId": agent.id, "to": THEM, "text": "hi"}, headers=auth
        )
    ).json()
    path = f"/carriers/twilio/sms/status?messageId={msg['id']}"
    for status in ("delivered", "sent", "queued", "delivered"):
        params = {"MessageSid": msg["carrierMessageId"], "MessageStatus": status}
        assert (await twilio_post(client, path, params)).status == 204
    got = await (await client.get(f"/v1/messages/{msg['id']}", headers=auth)).json()
    assert got["status"] == "delivered"
    types = [e.type for e in await events_of(database)]
    assert types == ["message.sent", "message.delivered"]
