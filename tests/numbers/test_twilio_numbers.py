"""Twilio numbers bought, configured and released through the fake Twilio's REST API: the
numbers' webhooks point at the relay, on the carrier account named or the deployment's."""

from __future__ import annotations

import pytest

from relay.config import Settings
from relay.secretbox import new_key
from relay.state import APP_STATE
from relay.store.models import Number
from relay_numbers import TWILIO_DEPLOYMENT_KEY, twilio_key
from tests.carriers.numbers_support import store_broken_by
from tests.conftest import DEPLOYMENT_SID, deployment_twilio

PUBLIC_URL = "https://relay.example.com"
SID_A, TOKEN_A = "AC" + "a" * 32, "tokenofaccountaaaaaaaaaaaaaaaa1"
WEBHOOKS = {
    "VoiceUrl": f"{PUBLIC_URL}/carriers/twilio/voice",
    "VoiceMethod": "POST",
    "SmsUrl": f"{PUBLIC_URL}/carriers/twilio/sms",
    "SmsMethod": "POST",
}


@pytest.fixture
def fake(twilio_rest):
    fake = twilio_rest[0]
    fake.add_account(SID_A, TOKEN_A, {"+14155550101"})
    return fake


@pytest.fixture
def settings(twilio_rest, fake) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        public_url=PUBLIC_URL,
        encryption_key=new_key(),
        **deployment_twilio(twilio_rest[1]),
    )


async def provision(client, auth, status=201, **body) -> dict:
    resp = await client.post("/v1/numbers", json={"provider": "twilio", **body}, headers=auth)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def stored(client, number_id: str) -> Number:
    async with client.app[APP_STATE].db.session() as session:
        return await session.get(Number, number_id)


async def test_a_twilio_number_is_bought_with_its_webhooks_on_the_relay(client, auth, fake):
    number = await provision(client, auth, areaCode="212")
    assert number["phoneNumber"].startswith("+1212555")
    assert (number["provider"], number["source"]) == ("twilio", "provisioned")
    [bought] = fake.phone_numbers.incoming.values()
    assert (bought.account_sid, bought.phone_number) == (DEPLOYMENT_SID, number["phoneNumber"])
    assert bought.config == WEBHOOKS
    row = await stored(client, number["id"])
    assert (row.carrier_key, row.provider_sid) == (TWILIO_DEPLOYMENT_KEY, bought.sid)
    assert (
        "GET",
        f"/2010-04-01/Accounts/{DEPLOYMENT_SID}/AvailablePhoneNumbers/US/Local.json",
    ) in fake.requests


async def test_a_toll_free_number_and_no_mobile_one(client, auth, fake):
    number = await provision(client, auth, type="toll_free")
    assert number["phoneNumber"].startswith("+1800555")
    refused = await provision(client, auth, 409, type="mobile")
    assert refused["error"]["code"] == "no_number_available"
    assert "mobile" in refused["error"]["message"]


async def test_a_number_is_bought_on_the_projects_own_account(client, auth, fake):
    body = {"provider": "twilio", "credentials": {"accountSid": SID_A, "authToken": TOKEN_A}}
    account = await (await client.post("/v1/carrier-accounts", json=body, headers=auth)).json()
    number = await provision(client, auth, carrierAccountId=account["id"])
    assert number["carrierAccountId"] == account["id"]
    [bought] = fake.phone_numbers.incoming.values()
    assert bought.account_sid == SID_A
    assert (await stored(client, number["id"])).carrier_key == twilio_key(SID_A)
    # Released with the same account's credentials, at Twilio.
    resp = await client.delete(f"/v1/numbers/{number['id']}", headers=auth)
    assert resp.status == 200
    assert fake.phone_numbers.released == [number["phoneNumber"]]
    assert ("DELETE", f"/2010-04-01/Accounts/{SID_A}/IncomingPhoneNumbers/{bought.sid}.json") in (
        fake.requests
    )


async def test_a_sim_account_cannot_buy_twilio_numbers(client, auth):
    account = await (
        await client.post("/v1/carrier-accounts", json={"provider": "sim"}, headers=auth)
    ).json()
    refused = await provision(client, auth, 422, carrierAccountId=account["id"])
    assert refused["error"]["code"] == "carrier_account_mismatch"


async def test_twilio_down_provisions_nothing(client, auth, fake):
    fake.down = True
    refused = await provision(client, auth, 502)
    assert refused["error"]["code"] == "carrier_unavailable"
    resp = await client.get("/v1/numbers", headers=auth)
    assert (await resp.json())["data"] == []


async def test_an_imported_number_is_pointed_at_the_relay(client, auth, fake):
    body = {"provider": "twilio", "credentials": {"accountSid": SID_A, "authToken": TOKEN_A}}
    account = await (await client.post("/v1/carrier-accounts", json=body, headers=auth)).json()
    imported = {
        "provider": "twilio",
        "phoneNumber": "+14155550101",
        "carrierAccountId": account["id"],
    }
    resp = await client.post("/v1/numbers/import", json=imported, headers=auth)
    assert resp.status == 201, await resp.text()
    [known] = fake.phone_numbers.incoming.values()
    assert (known.account_sid, known.config) == (SID_A, WEBHOOKS)
    # Released, an imported number stays its owner's: nothing is deleted at Twilio.
    resp = await client.delete(f"/v1/numbers/{(await resp.json())['id']}", headers=auth)
    assert resp.status == 200
    assert fake.phone_numbers.released == []


async def test_an_import_may_leave_the_numbers_webhooks_alone(client, auth, fake):
    body = {"provider": "twilio", "phoneNumber": "+14155550177", "configureWebhooks": False}
    resp = await client.post("/v1/numbers/import", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    [known] = fake.phone_numbers.incoming.values()
    assert known.config == {}
    assert not any(m == "POST" and "/IncomingPhoneNumbers/" in p for m, p in fake.requests)


async def test_a_twilio_number_that_cannot_be_stored_is_released(client, auth, fake):
    async with store_broken_by(client) as break_it:
        fake.phone_numbers.before_buy_answer = break_it
        refused = await provision(client, auth, 503)
    [phone] = fake.phone_numbers.released
    assert refused["error"]["code"] == "number_not_stored"
    assert phone in refused["error"]["message"]
    assert fake.phone_numbers.incoming == {}
    assert (await (await client.get("/v1/numbers", headers=auth)).json())["data"] == []
