"""Telnyx as a carrier, against a fake that speaks its wire protocols
(:mod:`relay.handset.fake_telnyx`): accounts verified with Telnyx and stored encrypted,
imports Telnyx confirms, inbound calls answered with a media stream, texts both ways, and
webhooks signed with Ed25519 (a bad or stale signature is refused before anything happens)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, text

from relay import tokens
from relay.config import Settings
from relay.handset.fake_telnyx import FakeTelnyx, FakeTelnyxAccount
from relay.state import APP_STATE
from relay.store.models import Call, CarrierAccount, Message, Number
from sms.service import SMS
from tests.carriers.telnyx_support import (
    CALLER,
    NUMBER_A,
    PUBLIC_URL,
    UNOWNED,
    add_account,
    bound_number,
    deliver_to_relay,
    import_number,
)


@pytest.fixture
def settings(telnyx_settings) -> Settings:
    return telnyx_settings


@pytest.fixture
async def hook_server(aiohttp_server) -> str:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"text": "See you Tuesday."})

    app = web.Application()
    app.router.add_post("/hook", answer)
    return str((await aiohttp_server(app)).make_url("/hook"))


# -- carrier accounts ----------------------------------------------------------------------


async def test_an_account_is_verified_and_pointed_at_the_relay_and_its_key_never_answered(
    client, auth, fake, account_a, database
):
    created = await add_account(client, auth, fake, account_a)
    assert created["provider"] == "telnyx"
    assert created["credentials"] == {
        "connectionId": account_a.connection_id,
        "apiKey": "..." + account_a.api_key[-4:],
    }
    # Verified with cheap reads, then the application's and profile's webhooks set.
    paths = [(m, p) for m, p, _ in fake.requests]
    assert ("GET", "/v2/balance") in paths
    assert ("GET", f"/v2/call_control_applications/{account_a.connection_id}") in paths
    assert account_a.call_webhook == f"{PUBLIC_URL}/carriers/telnyx/call"
    assert account_a.message_webhook == (
        f"{PUBLIC_URL}/carriers/telnyx/message?connection={account_a.connection_id}"
    )
    listed = await (await client.get("/v1/carrier-accounts", headers=auth)).json()
    assert account_a.api_key not in json.dumps(listed)
    async with database.session() as session:
        stored = (await session.execute(text("SELECT credentials FROM carrier_accounts"))).scalar()
    assert account_a.api_key not in stored and account_a.public_key not in stored


async def test_a_key_telnyx_refuses_is_422_and_nothing_is_stored(client, auth, fake, account_a):
    creds = {**fake.credentials(account_a), "apiKey": "KEY" + "0" * 32}
    body = {"provider": "telnyx", "credentials": creds}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "carrier_credentials_invalid"
    assert creds["apiKey"] not in json.dumps(error)
    listed = await (await client.get("/v1/carrier-accounts", headers=auth)).json()
    assert listed["data"] == []


async def test_an_application_not_on_the_account_is_422(client, auth, fake, account_a):
    creds = {**fake.credentials(account_a), "connectionId": "1234"}
    resp = await client.post(
        "/v1/carrier-accounts", json={"provider": "telnyx", "credentials": creds}, headers=auth
    )
    assert resp.status == 422
    assert "Call Control Application 1234" in (await resp.json())["error"]["message"]


async def test_a_public_key_that_is_not_ed25519_is_422(client, auth, fake, account_a):
    creds = {**fake.credentials(account_a), "publicKey": "not a key"}
    body = {"provider": "telnyx", "credentials": creds}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"].startswith("credentials")


async def test_telnyx_down_is_502(client, auth, fake, account_a):
    fake.down = True
    body = {"provider": "telnyx", "credentials": fake.credentials(account_a)}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=auth)
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "carrier_unavailable"


# -- numbers -------------------------------------------------------------------------------


async def test_an_import_telnyx_confirms_is_routed_by_the_application(
    client, auth, fake, account_a, database
):
    created = await add_account(client, auth, fake, account_a)
    number = await import_number(client, auth, NUMBER_A, created["id"])
    assert (number["provider"], number["carrierAccountId"]) == ("telnyx", created["id"])
    async with database.session() as session:
        row = await session.get(Number, number["id"])
    assert row.carrier_key == f"telnyx:{account_a.connection_id}"
    # Pointed at the relay: onto the account's application and messaging profile.
    patches = {p: b for m, p, b in fake.requests if m == "PATCH" and "/phone_numbers/" in p}
    assert patches == {
        f"/v2/phone_numbers/{row.provider_sid}": {"connection_id": account_a.connection_id},
        f"/v2/phone_numbers/{row.provider_sid}/messaging": {
            "messaging_profile_id": account_a.messaging_profile_id
        },
    }
    error = (await import_number(client, auth, UNOWNED, created["id"], status=422))["error"]
    assert (error["code"], error["field"]) == ("number_not_owned", "phoneNumber")


async def test_a_telnyx_import_needs_its_account(client, auth):
    body = {"provider": "telnyx", "phoneNumber": NUMBER_A}
    resp = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "carrier_account_required"


# -- inbound calls -------------------------------------------------------------------------


def answers(fake: FakeTelnyx) -> list[tuple[str, dict]]:
    return [(p, b) for m, p, b in fake.requests if p.endswith("/actions/answer")]


async def test_a_signed_call_is_answered_with_a_stream_to_the_relay(
    client, auth, fake, account_a, database
):
    agent, _, number = await bound_number(client, auth, fake, account_a, NUMBER_A)
    deliver_to_relay(fake, client)
    call = await fake.place_call(account_a, CALLER, NUMBER_A, [])
    [(path, body)] = answers(fake)
    assert path == f"/v2/calls/{call.call_control_id}/actions/answer"
    assert body["stream_track"] == "inbound_track"
    assert (body["stream_bidirectional_mode"], body["stream_bidirectional_codec"]) == (
        "rtp",
        "PCMU",
    )
    url = urlsplit(body["stream_url"])
    assert (url.scheme, url.netloc, url.path) == ("wss", "relay.example.com", "/media/telnyx")
    token = parse_qs(url.query)["token"][0]
    call_id = tokens.verify(client.app[APP_STATE].signing_key, token, "media")
    assert base64.b64decode(body["client_state"]).decode() == call_id
    async with database.session() as session:
        row = await session.get(Call, call_id)
    assert (row.status, row.connection_type, row.direction) == ("connecting", "telnyx", "inbound")
    assert (row.from_number, row.to_number, row.agent_id) == (CALLER, NUMBER_A, agent["id"])
    assert row.carrier_call_id == call.call_control_id


async def test_a_call_to_a_number_of_no_agent_here_is_hung_up(client, auth, fake, account_a):
    await add_account(client, auth, fake, account_a)  # no number imported
    deliver_to_relay(fake, client)
    call = await fake.place_call(account_a, CALLER, NUMBER_A, [])
    hangups = [p for m, p, _ in fake.requests if p.endswith("/actions/hangup")]
    assert hangups == [f"/v2/calls/{call.call_control_id}/actions/hangup"]
    assert answers(fake) == []


async def test_a_call_signed_by_another_account_or_not_at_all_is_refused(
    client, auth, make_key, fake, account_a, account_b, database
):
    await bound_number(client, auth, fake, account_a, NUMBER_A)
    await add_account(client, await make_key("proj-b"), fake, account_b)
    deliver_to_relay(fake, client)
    # Account B signing an event that names account A's application.
    forged = FakeTelnyxAccount(
        api_key=account_a.api_key,
        connection_id=account_a.connection_id,
        messaging_profile_id=account_a.messaging_profile_id,
        signing_key=account_b.signing_key,
        call_webhook=account_a.call_webhook,
    )
    call = await fake.place_call(forged, CALLER, NUMBER_A, [])
    assert fake.webhooks[-1] == ("call.initiated", account_a.call_webhook, 403)
    assert not call.alive
    # Unsigned, and stale.
    payload = {"data": {"event_type": "call.initiated", "payload": {"connection_id": "x"}}}
    resp = await client.post("/carriers/telnyx/call", json=payload)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    body = json.dumps(payload).encode()
    old = str(int(time.time()) - 3600)
    signature = base64.b64encode(account_a.signing_key.sign(old.encode() + b"|" + body)).decode()
    headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": old}
    resp = await client.post("/carriers/telnyx/call", data=body, headers=headers)
    assert resp.status == 403
    async with database.session() as session:
        assert (await session.execute(select(Call))).scalars().all() == []


# -- texts ---------------------------------------------------------------------------------


async def test_a_text_is_answered_through_the_account_and_followed_to_delivered(
    client, auth, fake, account_a, database, hook_server
):
    _, _, number = await bound_number(client, auth, fake, account_a, NUMBER_A, hook_server)
    deliver_to_relay(fake, client)
    assert await fake.text(account_a, CALLER, NUMBER_A, "Tuesday?") == 200
    await client.app[SMS].queues.idle()
    await fake.settle()
    [sent] = fake.messages
    assert (sent["from"], sent["to"], sent["text"]) == (NUMBER_A, CALLER, "See you Tuesday.")
    assert sent["webhook_url"] == (
        f"{PUBLIC_URL}/carriers/telnyx/message?connection={account_a.connection_id}"
    )
    reports = [(e, s) for e, u, s in fake.webhooks if e.startswith("message.")]
    assert reports == [("message.received", 200), ("message.sent", 200), ("message.finalized", 200)]
    async with database.session() as session:
        rows = (await session.execute(select(Message).order_by(Message.seq))).scalars().all()
    assert [(m.direction, m.status, m.number_id, m.provider) for m in rows] == [
        ("inbound", "received", number["id"], "telnyx"),
        ("outbound", "delivered", number["id"], "telnyx"),
    ]


async def test_an_undeliverable_text_fails_with_telnyxs_code(
    client, auth, fake, account_a, database, hook_server
):
    await bound_number(client, auth, fake, account_a, NUMBER_A, hook_server)
    deliver_to_relay(fake, client)
    fake.undeliverable.add(CALLER)
    await fake.text(account_a, CALLER, NUMBER_A, "Tuesday?")
    await client.app[SMS].queues.idle()
    await fake.settle()
    async with database.session() as session:
        reply = (
            await session.execute(select(Message).where(Message.direction == "outbound"))
        ).scalar_one()
    assert (reply.status, reply.error_code) == ("failed", "telnyx_40300")


async def test_a_text_with_a_bad_signature_is_refused(
    client, auth, fake, account_a, account_b, database
):
    await bound_number(client, auth, fake, account_a, NUMBER_A)
    deliver_to_relay(fake, client)
    account_b.message_webhook = account_a.message_webhook  # B's key, A's application
    assert await fake.text(account_b, CALLER, NUMBER_A, "hi") == 403
    async with database.session() as session:
        assert (await session.execute(select(Message))).scalars().all() == []


async def test_credentials_appear_in_no_log_line(client, auth, fake, account_a, capfd):
    await bound_number(client, auth, fake, account_a, NUMBER_A)
    bad = {**fake.credentials(account_a), "apiKey": "KEY" + "9" * 32}
    await client.post(
        "/v1/carrier-accounts", json={"provider": "telnyx", "credentials": bad}, headers=auth
    )
    await asyncio.sleep(0)
    out = "".join(capfd.readouterr())
    assert account_a.api_key not in out and bad["apiKey"] not in out
    async with client.app[APP_STATE].db.session() as session:
        accounts = (await session.execute(select(CarrierAccount))).scalars().all()
    assert all(account_a.api_key not in repr(a.credentials) for a in accounts)


async def test_a_signed_text_with_a_nul_in_a_number_is_400_and_stores_nothing(
    client, auth, fake, account_a, database
):
    await bound_number(client, auth, fake, account_a, NUMBER_A)
    payload = {
        "id": "m1",
        "direction": "inbound",
        "from": {"phone_number": CALLER},
        "to": [{"phone_number": NUMBER_A + "\x00"}],
        "text": "hi",
    }
    url = f"/carriers/telnyx/message?connection={account_a.connection_id}"
    deliver_to_relay(fake, client)
    status = await fake.post_webhook(account_a, PUBLIC_URL + url, "message.received", payload)
    assert status == 400
    async with database.session() as session:
        assert (await session.execute(select(Message))).scalars().all() == []
