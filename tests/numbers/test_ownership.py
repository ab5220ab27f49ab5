"""Numbers belong to whoever proves it: carrier accounts verified with the carrier and stored
encrypted, imports the carrier confirms, routing by (carrier account, number), and carrier
message ids scoped per account. Twilio is a fake of its REST API that speaks its wire format
(:mod:`relay.handset.fake_twilio`); inbound webhooks are signed as Twilio signs them."""

from __future__ import annotations

import pytest
from aiohttp import web
from sqlalchemy import select, text
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.config import Settings
from relay.secretbox import CannotDecrypt, KeyMissing, SecretBox, new_key
from relay.store.models import CarrierAccount, Message
from sms.service import SMS
from tests.conftest import deployment_twilio

PUBLIC_URL = "https://relay.example.com"
SID_A, TOKEN_A = "AC" + "a" * 32, "tokenofaccountaaaaaaaaaaaaaaaa1"
SID_B, TOKEN_B = "AC" + "b" * 32, "tokenofaccountbbbbbbbbbbbbbbbb2"
NUMBER_A = "+14155550101"  # owned by account A at the fake Twilio
NUMBER_B = "+14155550102"  # owned by account B
UNOWNED = "+14155550109"  # owned by nobody
CALLER = "+12025550142"
KEY = new_key()
AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}


@pytest.fixture
def fake(twilio_rest):
    fake = twilio_rest[0]
    fake.add_account(SID_A, TOKEN_A, {NUMBER_A})
    fake.add_account(SID_B, TOKEN_B, {NUMBER_B})
    return fake


@pytest.fixture
async def hook_server(aiohttp_server) -> str:
    """An agent's webhook that answers every text."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"text": "Sure."})

    app = web.Application()
    app.router.add_post("/hook", answer)
    return str((await aiohttp_server(app)).make_url("/hook"))


@pytest.fixture
def settings(twilio_rest, fake) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        encryption_key=KEY,
        **deployment_twilio(twilio_rest[1]),
    )


async def add_account(client, headers, sid=SID_A, token=TOKEN_A, status=201) -> dict:
    body = {"provider": "twilio", "credentials": {"accountSid": sid, "authToken": token}}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def import_number(client, headers, phone, account_id=None, status=201, **extra) -> dict:
    body = {"provider": "twilio", "phoneNumber": phone, **extra}
    if account_id:
        body["carrierAccountId"] = account_id
    resp = await client.post("/v1/numbers/import", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def new_agent(client, headers) -> dict:
    resp = await client.post("/v1/agents", json=AGENT, headers=headers)
    assert resp.status == 201
    return await resp.json()


def signed_post(client, path, params, token):
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def call_params(account_sid, to, sid="CA0001") -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "CallSid": sid,
        "From": CALLER,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


# -- carrier accounts ----------------------------------------------------------------------


async def test_an_account_is_verified_with_twilio_and_its_token_is_never_answered(
    client, auth, fake, database, capfd
):
    account = await add_account(client, auth)
    assert account["id"].startswith("ca_")
    assert account["object"] == "carrier_account"
    assert account["provider"] == "twilio"
    assert account["credentials"] == {"accountSid": SID_A, "authToken": "..." + TOKEN_A[-4:]}
    assert ("GET", f"/2010-04-01/Accounts/{SID_A}.json") in fake.requests
    got = await client.get(f"/v1/carrier-accounts/{account['id']}", headers=auth)
    listed = await client.get("/v1/carrier-accounts", headers=auth)
    for resp in (got, listed):
        assert TOKEN_A not in await resp.text()
    assert (await listed.json())["data"] == [account]
    assert TOKEN_A not in "".join(capfd.readouterr())


async def test_the_stored_credentials_are_unreadable_without_the_key(client, auth, database):
    await add_account(client, auth)
    async with database.session() as session:
        stored = (await session.execute(text("SELECT * FROM carrier_accounts"))).mappings().one()
    assert not any(TOKEN_A in str(value) for value in stored.values())
    assert TOKEN_A in SecretBox(KEY).decrypt(stored["credentials"])
    with pytest.raises(CannotDecrypt):
        SecretBox(new_key()).decrypt(stored["credentials"])


async def test_credentials_twilio_refuses_are_422_and_nothing_is_stored(
    client, auth, database, capfd
):
    wrong = "wrongtokenwrongtokenwrongtoken00"
    resp = await client.post(
        "/v1/carrier-accounts",
        json={"provider": "twilio", "credentials": {"accountSid": SID_A, "authToken": wrong}},
        headers=auth,
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("carrier_credentials_invalid", "credentials")
    assert SID_A in error["message"] and wrong not in await resp.text()
    assert wrong not in "".join(capfd.readouterr())
    async with database.session() as session:
        assert (await session.execute(select(CarrierAccount))).first() is None


async def test_twilio_down_is_502_carrier_unavailable(client, auth, fake, database):
    fake.down = True
    resp = await client.post(
        "/v1/carrier-accounts",
        json={"provider": "twilio", "credentials": {"accountSid": SID_A, "authToken": TOKEN_A}},
        headers=auth,
    )
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "carrier_unavailable"
    assert TOKEN_A not in await resp.text()
    async with database.session() as session:
        assert (await session.execute(select(CarrierAccount))).first() is None


async def test_without_an_encryption_key_no_credentials_are_taken(
    app_client, twilio_rest, fake, make_key
):
    client = await app_client(
        Settings(allow_private_webhooks=True, **deployment_twilio(twilio_rest[1]))
    )
    headers = await make_key("proj-a")
    resp = await client.post(
        "/v1/carrier-accounts",
        json={"provider": "twilio", "credentials": {"accountSid": SID_A, "authToken": TOKEN_A}},
        headers=headers,
    )
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "encryption_key_missing"
    assert fake.requests == []  # not even asked: the relay could not have kept them


async def test_a_relay_refuses_to_start_on_credentials_it_cannot_open(
    client, auth, database, twilio_rest
):
    await add_account(client, auth)
    for key, error in (("", KeyMissing), (new_key(), CannotDecrypt)):
        settings = Settings(encryption_key=key, **deployment_twilio(twilio_rest[1]))
        runner = web.AppRunner(create_app(settings, db=database))
        with pytest.raises(error) as refused:
            await runner.setup()
        assert TOKEN_A not in str(refused.value)
        await runner.cleanup()


async def test_a_start_with_two_keys_reencrypts_with_the_first(
    client, auth, database, aiohttp_client, twilio_rest
):
    await add_account(client, auth)
    rotated = new_key()
    settings = Settings(encryption_key=f"{rotated},{KEY}", **deployment_twilio(twilio_rest[1]))
    await aiohttp_client(create_app(settings, db=database))
    async with database.session() as session:
        account = (await session.execute(select(CarrierAccount))).scalar_one()
    assert TOKEN_A in SecretBox(rotated).decrypt(account.credentials)  # the old key can go


async def test_new_credentials_must_be_the_same_accounts_and_are_verified(client, auth):
    account = await add_account(client, auth)
    url = f"/v1/carrier-accounts/{account['id']}"
    other = {"accountSid": SID_B, "authToken": TOKEN_B}
    resp = await client.patch(url, json={"credentials": other}, headers=auth)
    assert resp.status == 422
    bad = {"accountSid": SID_A, "authToken": "x" * 32}
    resp = await client.patch(url, json={"credentials": bad}, headers=auth)
    assert (await resp.json())["error"]["code"] == "carrier_credentials_invalid"
    resp = await client.patch(url, json={"name": "main"}, headers=auth)
    assert (await resp.json())["name"] == "main"


async def test_an_account_with_numbers_cannot_be_removed(client, auth):
    account = await add_account(client, auth)
    number = await import_number(client, auth, NUMBER_A, account["id"])
    url = f"/v1/carrier-accounts/{account['id']}"
    resp = await client.delete(url, headers=auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "carrier_account_in_use"
    await client.delete(f"/v1/numbers/{number['id']}", headers=auth)
    assert (await client.delete(url, headers=auth)).status == 200
    assert (await client.get(url, headers=auth)).status == 404


async def test_another_projects_account_is_not_found(client, auth, make_key):
    account = await add_account(client, auth)
    other = await make_key("proj-b")
    assert (await client.get(f"/v1/carrier-accounts/{account['id']}", headers=other)).status == 404
    resp = await client.post(
        "/v1/numbers/import",
        json={"provider": "twilio", "phoneNumber": NUMBER_A, "carrierAccountId": account["id"]},
        headers=other,
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["field"] == "carrierAccountId"


# -- imports the carrier confirms ----------------------------------------------------------


async def test_an_import_the_account_owns_is_confirmed_by_twilio(client, auth, fake):
    account = await add_account(client, auth)
    number = await import_number(client, auth, NUMBER_A, account["id"])
    assert number["carrierAccountId"] == account["id"]
    assert number["phoneNumber"] == NUMBER_A
    path = f"/2010-04-01/Accounts/{SID_A}/IncomingPhoneNumbers.json"
    assert ("GET", path) in fake.requests


async def test_a_number_the_account_does_not_own_is_refused(client, auth, database):
    account = await add_account(client, auth)
    error = (await import_number(client, auth, NUMBER_B, account["id"], status=422))["error"]
    assert (error["code"], error["field"]) == ("number_not_owned", "phoneNumber")
    assert (await (await client.get("/v1/numbers", headers=auth)).json())["data"] == []


async def test_another_projects_number_answers_exactly_like_an_unknown_one(client, auth, make_key):
    mine = await add_account(client, auth)
    await import_number(client, auth, NUMBER_A, mine["id"])
    # Project B holds real credentials of the same Twilio account, so Twilio says it owns
    # NUMBER_A; the relay still answers as if it did not, as for a number nobody owns.
    other = await make_key("proj-b")
    theirs = await add_account(client, other)
    fake_owns = await import_number(client, other, NUMBER_A, theirs["id"], status=422)
    unknown = await import_number(client, other, UNOWNED, theirs["id"], status=422)
    assert _with_number(fake_owns, "", "") == _with_number(unknown, UNOWNED, NUMBER_A)
    # The deployment's own account, first come first served between projects, the same.
    await import_number(client, auth, "+14155550150")
    taken = await import_number(client, other, "+14155550150", status=422)
    assert taken["error"]["code"] == "number_not_owned"


def _with_number(body: dict, old: str, new: str) -> dict:
    error = {k: v for k, v in body["error"].items() if k != "requestId"}
    error["message"] = error["message"].replace(old, new)
    error["details"] = [{**d, "message": d["message"].replace(old, new)} for d in error["details"]]
    return {"error": error}


async def test_twilio_down_on_import_is_502(client, auth, fake):
    account = await add_account(client, auth)
    fake.down = True
    error = (await import_number(client, auth, NUMBER_A, account["id"], status=502))["error"]
    assert error["code"] == "carrier_unavailable"


async def test_without_an_account_or_a_deployment_account_an_import_is_refused(
    app_client, make_key
):
    client = await app_client(Settings(allow_private_webhooks=True))
    headers = await make_key("proj-a")
    error = (await import_number(client, headers, NUMBER_A, status=422))["error"]
    assert (error["code"], error["field"]) == ("carrier_account_required", "carrierAccountId")


async def test_a_carrier_nothing_can_prove_ownership_for_is_refused(client, auth):
    body = {"provider": "vonage", "phoneNumber": NUMBER_A}
    resp = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "provider_not_verifiable"


async def test_an_account_of_another_carrier_is_refused(client, auth):
    sim = await (
        await client.post("/v1/carrier-accounts", json={"provider": "sim"}, headers=auth)
    ).json()
    assert sim["credentials"] is None
    error = (await import_number(client, auth, NUMBER_A, sim["id"], status=422))["error"]
    assert error["code"] == "carrier_account_mismatch"


# -- the sim carrier imports only from its ranges ------------------------------------------


@pytest.mark.parametrize("phone", ["+14155550123", "+442079460123", "+61491570123"])
async def test_the_sim_imports_numbers_of_its_ranges(client, auth, phone):
    body = {"provider": "sim", "phoneNumber": phone}
    resp = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("phone", ["+14155551234", "+442071234567", "+61412345678"])
async def test_the_sim_refuses_numbers_outside_its_ranges(client, auth, phone):
    body = {"provider": "sim", "phoneNumber": phone}
    resp = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "number_not_owned"
    assert "ranges" in error["message"]


async def test_a_sim_number_of_another_project_is_imported_as_any_free_one(client, auth, make_key):
    mine = await (await client.post("/v1/numbers", json={}, headers=auth)).json()
    other = await make_key("proj-b")
    body = {"provider": "sim", "phoneNumber": mine["phoneNumber"]}
    resp = await client.post("/v1/numbers/import", json=body, headers=other)
    assert resp.status == 201  # each project's sim account has its own copy: nothing leaks
    own = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert own.status == 409
    assert (await own.json())["error"]["code"] == "phone_number_taken"


# -- routing by (carrier account, number) --------------------------------------------------


async def test_a_call_reaches_the_number_of_the_account_that_signed_it(
    client, auth, make_key, database
):
    a_agent = await new_agent(client, auth)
    account_a = await add_account(client, auth)
    await import_number(client, auth, NUMBER_A, account_a["id"], agentId=a_agent["id"])
    other = await make_key("proj-b")
    account_b = await add_account(client, other, SID_B, TOKEN_B)
    await import_number(client, other, NUMBER_B, account_b["id"])

    voice = "/carriers/twilio/voice"
    resp = await signed_post(client, voice, call_params(SID_A, NUMBER_A, "CA1"), TOKEN_A)
    assert "<Connect" in await resp.text()
    # Account B's Twilio calling A's number: not a number of B's, whatever its value.
    resp = await signed_post(client, voice, call_params(SID_B, NUMBER_A, "CA2"), TOKEN_B)
    assert "not in service" in await resp.text()
    # A request naming account A, signed with account B's token: refused.
    resp = await signed_post(client, voice, call_params(SID_A, NUMBER_A, "CA3"), TOKEN_B)
    assert resp.status == 403
    # The deployment's token does not speak for account A either.
    params = call_params(SID_A, NUMBER_A, "CA4")
    resp = await signed_post(client, voice, params, client.app[SMS].settings.twilio_auth_token)
    assert resp.status == 403


async def test_a_text_reaches_the_number_of_the_account_and_is_answered_through_it(
    client, auth, fake, database, hook_server, capfd
):
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "Ava", "webhookUrl": hook_server}, headers=auth
        )
    ).json()
    account = await add_account(client, auth)
    number = await import_number(client, auth, NUMBER_A, account["id"], agentId=agent["id"])
    fake.deliver_to = (PUBLIC_URL, str(client.make_url("")).rstrip("/"))
    params = {
        "AccountSid": SID_A,
        "MessageSid": "SM" + "1" * 32,
        "From": CALLER,
        "To": NUMBER_A,
        "Body": "Tuesday?",
        "NumMedia": "0",
    }
    resp = await signed_post(client, "/carriers/twilio/sms", params, TOKEN_A)
    assert resp.status == 200
    await client.app[SMS].queues.idle()
    await fake.settle()
    assert fake.senders == [SID_A]  # the reply went out on the account's own credentials
    assert [c[0] for c in fake.callbacks] == ["sent", "delivered"]
    assert all(code == 204 for _, _, code in fake.callbacks)
    async with database.session() as session:
        rows = (await session.execute(select(Message).order_by(Message.seq))).scalars().all()
    assert [(m.direction, m.status, m.number_id) for m in rows] == [
        ("inbound", "received", number["id"]),
        ("outbound", "delivered", number["id"]),
    ]
    # The same text under another account's name does not reach the number.
    resp = await signed_post(
        client, "/carriers/twilio/sms", {**params, "AccountSid": SID_B}, TOKEN_B
    )
    assert resp.status == 403  # no project added account B: nothing can check its signature
    assert TOKEN_A not in "".join(capfd.readouterr())  # nor logged on the way


# -- carrier message ids are scoped per account --------------------------------------------


async def test_the_same_sim_message_id_in_two_projects_is_two_texts(
    client, auth, make_key, hook_server
):
    other = await make_key("proj-b")
    receipts = []
    for headers in (auth, other):
        agent = await (
            await client.post(
                "/v1/agents", json={"name": "Ava", "webhookUrl": hook_server}, headers=headers
            )
        ).json()
        number = await (
            await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=headers)
        ).json()
        body = {"to": number["phoneNumber"], "text": "hi", "carrierMessageId": "same-id"}
        resp = await client.post("/carriers/sim/sms", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
        receipts.append(await resp.json())
    assert [r["duplicate"] for r in receipts] == [False, False]
    assert receipts[0]["messageId"] != receipts[1]["messageId"]
    listed = await (await client.get("/v1/messages", headers=other)).json()
    assert [m["id"] for m in listed["data"]] == [receipts[1]["messageId"]]
    # Within one account the id still names one text: the carrier's retry is recognised.
    resp = await client.post("/carriers/sim/sms", json=body, headers=other)
    assert (await resp.json())["duplicate"] is True
