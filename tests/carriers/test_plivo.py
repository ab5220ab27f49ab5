"""Plivo as a project's carrier: accounts verified with Plivo and stored encrypted, numbers
imported by proof, V3-signed voice and message webhooks, texts both ways, and two accounts
that never see each other's numbers. Plivo is :class:`relay.handset.fake_plivo.FakePlivo`
(its REST API and its signed requests); the relay checks signatures with Plivo's SDK."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from plivo.utils.signature_v3 import validate_v3_signature
from sqlalchemy import select, text

from relay import tokens
from relay.carriers.plivo import NOT_IN_SERVICE
from relay.handset.fake_plivo import v3_signature
from relay.state import APP_STATE
from relay.store.models import CarrierAccount, Message
from sms.service import SMS
from tests.carriers.plivo_support import (
    AUTH_A,
    AUTH_B,
    CALLER,
    NUMBER_A,
    NUMBER_B,
    PUBLIC_URL,
    TOKEN_A,
    TOKEN_B,
    add_account,
    answer_url,
    import_number,
    message_url,
    origin,
    plivo_agent,
    plivo_settings,
)
from tests.transports.support import calls, lifecycle_types, wait_for


@pytest.fixture
def settings(plivo):
    return plivo_settings(plivo[1])


@pytest.fixture
def fake(plivo, client):
    fake = plivo[0]
    fake.deliver_to = (PUBLIC_URL, origin(client))
    return fake


def test_the_fakes_signature_is_the_one_plivos_sdk_checks():
    """The fake signs from Plivo's documentation; the relay checks with Plivo's SDK."""
    url = f"{PUBLIC_URL}/carriers/plivo/sms?messageId=msg_1&authId={AUTH_A}"
    form = {"To": "14155550111", "Status": "delivered", "MessageUUID": "u-1"}
    sig = v3_signature(url, form, TOKEN_A, "12345")
    assert validate_v3_signature("POST", url, "12345", TOKEN_A, sig, params=form)
    assert not validate_v3_signature("POST", url, "12346", TOKEN_A, sig, params=form)
    assert not validate_v3_signature(
        "POST", url, "12345", TOKEN_A, sig, params={**form, "Status": "failed"}
    )
    bare = f"{PUBLIC_URL}/carriers/plivo/voice"
    sig = v3_signature(bare, {}, TOKEN_A, "n")
    assert validate_v3_signature("POST", bare, "n", TOKEN_A, sig, params={})


# -- carrier accounts ----------------------------------------------------------------------


async def test_an_account_is_verified_with_plivo_and_its_token_is_never_answered(
    client, auth, fake, database, capfd
):
    created = await add_account(client, auth)
    assert created["provider"] == "plivo"
    assert created["credentials"] == {"authId": AUTH_A, "authToken": "..." + TOKEN_A[-4:]}
    assert ("GET", f"/v1/Account/{AUTH_A}/") in fake.requests
    listed = await (await client.get("/v1/carrier-accounts", headers=auth)).text()
    one = await (await client.get(f"/v1/carrier-accounts/{created['id']}", headers=auth)).text()
    assert TOKEN_A not in listed + one
    async with database.session() as session:
        raw = (await session.execute(text("SELECT credentials FROM carrier_accounts"))).scalar()
    assert raw and TOKEN_A not in raw and AUTH_A not in raw  # sealed, not merely hidden
    assert TOKEN_A not in "".join(capfd.readouterr())


async def test_credentials_plivo_refuses_are_422_and_nothing_is_stored(
    client, auth, fake, database, capfd
):
    wrong = "wrongtokenwrongtokenwrongtoken00"
    resp = await add_account(client, auth, token=wrong, status=422)
    assert resp["error"]["code"] == "carrier_credentials_invalid"
    assert wrong not in str(resp)
    async with database.session() as session:
        assert (await session.execute(select(CarrierAccount))).first() is None
    assert wrong not in "".join(capfd.readouterr())


async def test_plivo_down_is_502_carrier_unavailable(client, auth, fake):
    fake.down = True
    resp = await add_account(client, auth, status=502)
    assert resp["error"]["code"] == "carrier_unavailable"


@pytest.mark.parametrize(
    "credentials",
    [
        {"accountSid": "AC" + "a" * 32, "authToken": TOKEN_A},  # Twilio's shape
        {"authId": "XX" + "A" * 18, "authToken": TOKEN_A},  # not an auth id
        {"authId": AUTH_A, "authToken": "short"},
        None,
    ],
)
async def test_credentials_that_are_not_plivos_are_refused_before_asking(
    client, auth, fake, credentials
):
    body = {"provider": "plivo", "credentials": credentials}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=auth)
    assert resp.status in (400, 422), await resp.text()
    assert fake.requests == []


async def test_rotated_credentials_must_be_the_same_accounts_and_are_verified(client, auth, fake):
    created = await add_account(client, auth)
    path = f"/v1/carrier-accounts/{created['id']}"
    other = {"credentials": {"authId": AUTH_B, "authToken": TOKEN_B}}
    resp = await client.patch(path, json=other, headers=auth)
    assert resp.status == 422
    rotated = TOKEN_A[:-1] + "9"
    fake.accounts[AUTH_A].auth_token = rotated
    same = {"credentials": {"authId": AUTH_A, "authToken": rotated}}
    resp = await client.patch(path, json=same, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["credentials"]["authToken"] == "..." + rotated[-4:]


# -- numbers: imported by proof ------------------------------------------------------------


async def test_an_import_the_account_rents_is_confirmed_by_plivo(client, auth, fake):
    account = await add_account(client, auth)
    number = await import_number(client, auth, NUMBER_A, account["id"])
    assert (number["provider"], number["carrierAccountId"]) == ("plivo", account["id"])
    assert ("GET", f"/v1/Account/{AUTH_A}/Number/{NUMBER_A[1:]}/") in fake.requests


async def test_an_imported_number_is_pointed_at_the_relays_plivo_webhooks(client, auth, fake):
    account = await add_account(client, auth)
    await import_number(client, auth, NUMBER_A, account["id"])
    plivo = fake.accounts[AUTH_A]
    [app] = plivo.applications.values()
    assert (app["answer_url"], app["message_url"]) == (answer_url(), message_url())
    assert plivo.number_apps == {NUMBER_A: app["app_id"]}
    # A second number goes through the same application, not a new one.
    plivo.numbers = {NUMBER_A, "+14155550113"}
    await import_number(client, auth, "+14155550113", account["id"])
    assert len(plivo.applications) == 1
    assert plivo.number_apps["+14155550113"] == app["app_id"]


async def test_a_number_the_account_does_not_rent_is_refused(client, auth, fake):
    account = await add_account(client, auth)
    error = (await import_number(client, auth, NUMBER_B, account["id"], status=422))["error"]
    assert error["code"] == "number_not_owned"
    assert fake.accounts[AUTH_A].number_apps == {}  # nothing was configured for it


async def test_a_plivo_import_needs_an_account(client, auth, fake):
    error = (await import_number(client, auth, NUMBER_A, status=422))["error"]
    assert error["code"] == "carrier_account_required"


async def test_plivo_down_on_import_is_502(client, auth, fake):
    account = await add_account(client, auth)
    fake.down = True
    error = (await import_number(client, auth, NUMBER_A, account["id"], status=502))["error"]
    assert error["code"] == "carrier_unavailable"


# -- inbound calls --------------------------------------------------------------------------


async def test_a_signed_call_is_answered_with_a_bidirectional_stream(client, auth, fake, database):
    agent = await plivo_agent(client, auth, greeting="Hi, Ava here.")
    async with aiohttp.ClientSession() as http:
        call = await fake.incoming_call(http, answer_url(), CALLER, NUMBER_A)
    assert call.status == 200, call.answer
    stream = ET.fromstring(call.answer).find("Stream")
    assert stream is not None
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    parts = urlsplit(call.stream_url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "relay.example.com", "/media/plivo")
    token = parse_qs(parts.query)["token"][0]
    assert call.extra_headers["token"] == token
    key = client.app[APP_STATE].signing_key
    call_id = tokens.verify(key, token, "media")
    assert call.extra_headers["callId"] == call_id
    assert call.redirect == f"{answer_url()}".replace("/voice?", "/voice/after?") + (
        f"&callId={call_id}"
    )
    [row] = await calls(database)
    assert (row.id, row.status, row.connection_type, row.direction) == (
        call_id,
        "connecting",
        "plivo",
        "inbound",
    )
    assert (row.from_number, row.to_number, row.carrier_call_id) == (
        CALLER,
        NUMBER_A,
        call.call_uuid,
    )
    assert row.agent_id == agent["id"]
    assert await lifecycle_types(database, call_id) == ["call.queued", "call.connecting"]


async def signed(client, path: str, form: dict[str, str], token: str, *, headers=None):
    nonce = "nonce-1"
    sig = v3_signature(PUBLIC_URL + path, form, token, nonce)
    sent = {"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce}
    return await client.post(path, data=form, headers={**sent, **(headers or {})})


VOICE_FORM = {"CallUUID": "c-1", "From": CALLER[1:], "To": NUMBER_A[1:], "Direction": "inbound"}


@pytest.mark.parametrize(
    "case", ["missing", "garbage", "other-token", "tampered", "no-auth-id", "other-nonce"]
)
async def test_a_call_plivo_did_not_sign_is_refused(client, auth, fake, database, case):
    await plivo_agent(client, auth)
    path = f"/carriers/plivo/voice?authId={AUTH_A}"
    nonce = "n1"
    sig = v3_signature(PUBLIC_URL + path, VOICE_FORM, TOKEN_A, nonce)
    headers = {"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce}
    form = dict(VOICE_FORM)
    if case == "missing":
        headers = {}
    elif case == "garbage":
        headers["X-Plivo-Signature-V3"] = "bm90IGEgc2lnbmF0dXJl"
    elif case == "other-token":
        headers["X-Plivo-Signature-V3"] = v3_signature(PUBLIC_URL + path, form, TOKEN_B, nonce)
    elif case == "tampered":
        form["From"] = "15555550100"
    elif case == "no-auth-id":
        path = "/carriers/plivo/voice"
    elif case == "other-nonce":
        headers["X-Plivo-Signature-V3-Nonce"] = "n2"
    resp = await client.post(path, data=form, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert await calls(database) == []


async def test_an_unknown_number_hears_it_is_not_in_service(client, auth, fake, database):
    await add_account(client, auth)
    async with aiohttp.ClientSession() as http:
        call = await fake.incoming_call(http, answer_url(), CALLER, "+14155550199")
    root = ET.fromstring(call.answer)
    assert [c.tag for c in root] == ["Speak", "Hangup"]
    assert root[0].text == NOT_IN_SERVICE
    assert await calls(database) == []


async def test_two_projects_accounts_never_reach_each_others_numbers(
    client, auth, make_key, fake, database
):
    await plivo_agent(client, auth)  # project A: account A, NUMBER_A
    other = await make_key("proj-b")
    await add_account(client, other, AUTH_B, TOKEN_B)
    b = fake.accounts[AUTH_B]
    async with aiohttp.ClientSession() as http:
        # Account B (validly signed by B) asks for A's number: it is not B's.
        call = await fake.incoming_call(http, answer_url(AUTH_B), CALLER, NUMBER_A, b)
        assert [c.tag for c in ET.fromstring(call.answer)] == ["Speak", "Hangup"]
        # B's signature on A's URL is no signature at all.
        call = await fake.incoming_call(http, answer_url(AUTH_A), CALLER, NUMBER_A, b)
        assert call.status == 403
    assert await calls(database) == []
    listed = await (await client.get("/v1/numbers", headers=other)).json()
    assert listed["data"] == []


# -- texts both ways ----------------------------------------------------------------------


async def test_a_text_is_answered_through_the_accounts_own_plivo_credentials(
    client, auth, fake, database, text_hook, capfd
):
    number_id = None
    await plivo_agent(client, auth, webhook_url=text_hook)
    listed = await (await client.get("/v1/numbers", headers=auth)).json()
    number_id = listed["data"][0]["id"]
    assert await fake.incoming_text(message_url(), CALLER, NUMBER_A, "Tuesday?", None) == 200
    await client.app[SMS].queues.idle()
    await wait_for(lambda: len(fake.callbacks) == 2)
    [sent] = fake.messages
    assert (sent["auth_id"], sent["src"], sent["dst"], sent["text"]) == (
        AUTH_A,
        NUMBER_A[1:],
        CALLER[1:],
        "Sure.",
    )
    assert sent["type"] == "sms"
    assert sent["url"].startswith(f"{PUBLIC_URL}/carriers/plivo/sms/status?authId={AUTH_A}&")
    assert [(f["Status"], code) for _, f, code in fake.callbacks] == [
        ("sent", 204),
        ("delivered", 204),
    ]

    async def delivered() -> bool:
        async with database.session() as session:
            rows = (await session.execute(select(Message).order_by(Message.seq))).scalars().all()
        return [(m.direction, m.status, m.number_id) for m in rows] == [
            ("inbound", "received", number_id),
            ("outbound", "delivered", number_id),
        ]

    await wait_for(delivered)
    async with database.session() as session:
        [inbound] = (
            await session.execute(select(Message).where(Message.direction == "inbound"))
        ).scalars()
    assert (inbound.from_number, inbound.to_number, inbound.text) == (CALLER, NUMBER_A, "Tuesday?")
    assert TOKEN_A not in "".join(capfd.readouterr())


async def test_an_undelivered_text_fails_with_plivos_error_code(
    client, auth, fake, database, text_hook
):
    await plivo_agent(client, auth, webhook_url=text_hook)
    fake.undeliverable.add(CALLER)
    await fake.incoming_text(message_url(), CALLER, NUMBER_A, "Hello?", None)
    await client.app[SMS].queues.idle()

    async def failed() -> bool:
        async with database.session() as session:
            row = (
                await session.execute(select(Message).where(Message.direction == "outbound"))
            ).scalar_one_or_none()
        return row is not None and (row.status, row.error_code) == ("failed", "plivo_200")

    await wait_for(failed)


async def test_a_text_plivo_did_not_sign_is_refused(client, auth, fake, database):
    await plivo_agent(client, auth)
    form = {"From": CALLER[1:], "To": NUMBER_A[1:], "Text": "hi", "MessageUUID": "m-1"}
    resp = await signed(client, f"/carriers/plivo/sms?authId={AUTH_A}", form, TOKEN_B)
    assert resp.status == 403
    async with database.session() as session:
        assert (await session.execute(select(Message))).first() is None


async def test_a_delivery_report_from_another_account_moves_nothing(
    client, auth, make_key, fake, database, text_hook
):
    await plivo_agent(client, auth, webhook_url=text_hook)
    await add_account(client, await make_key("proj-b"), AUTH_B, TOKEN_B)
    fake.accounts[AUTH_A].numbers = {NUMBER_A}
    await fake.incoming_text(message_url(), CALLER, NUMBER_A, "Tuesday?", None)
    await client.app[SMS].queues.idle()
    await wait_for(lambda: len(fake.callbacks) == 2)
    [sent] = fake.messages
    # Account B signs a report naming A's text by its uuid, on B's own URL: not B's text.
    form = {"MessageUUID": sent["message_uuid"], "Status": "undelivered", "ErrorCode": "1"}
    resp = await signed(client, f"/carriers/plivo/sms/status?authId={AUTH_B}", form, TOKEN_B)
    assert resp.status == 204
    async with database.session() as session:
        row = (
            await session.execute(select(Message).where(Message.direction == "outbound"))
        ).scalar_one()
    assert row.status == "delivered"
