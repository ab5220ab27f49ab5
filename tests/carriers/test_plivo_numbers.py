"""Plivo numbers provisioned through ``POST /v1/numbers`` against the fake Plivo: searched
(``GET PhoneNumber/``), rented on the account's application for this relay (``POST
PhoneNumber/{number}/ {"app_id"}``), given back (``DELETE Number/{number}/``); a Plivo failure
answers a stable code and stores nothing, and a number rented but not stored is given back."""

from __future__ import annotations

import aiohttp
import pytest

from relay.config import Settings
from relay.state import APP_STATE
from relay.store.models import Number
from relay_numbers import plivo_key
from tests.carriers import plivo_support as pv
from tests.carriers.numbers_support import numbers, provision, store_broken_by


@pytest.fixture
def settings(plivo) -> Settings:
    return pv.plivo_settings(plivo[1], carrier_api_timeout_seconds=1.0)


async def test_a_number_is_rented_on_the_accounts_relay_application(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    number = await provision(client, auth, "plivo", account["id"], areaCode="212")
    phone = number["phoneNumber"]
    assert phone.startswith("+1212555")
    assert (number["provider"], number["source"]) == ("plivo", "provisioned")
    plivo_account = fake.accounts[pv.AUTH_A]
    app_id = plivo_account.number_apps[phone]
    app = plivo_account.applications[app_id]
    assert (app["answer_url"], app["message_url"]) == (pv.answer_url(), pv.message_url())
    assert fake.phone_numbers.rented[phone] == (pv.AUTH_A, app_id)
    [search] = fake.phone_numbers.searches
    assert dict(search) == {
        "country_iso": "US",
        "type": "local",
        "pattern": "212",
        "services": "voice,sms",
        "limit": "20",
    }
    assert ("POST", f"/v1/Account/{pv.AUTH_A}/PhoneNumber/{phone[1:]}/") in fake.requests
    async with client.app[APP_STATE].db.session() as session:
        row = await session.get(Number, number["id"])
    assert row.carrier_key == plivo_key(pv.AUTH_A)


async def test_an_inbound_call_to_a_rented_number_reaches_its_agent(client, auth, plivo):
    """Rented, the number answers through the relay: Plivo asks the application's answer URL
    and the relay streams the call (the signature is the account's)."""
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "Ava", "webhookUrl": "http://127.0.0.1:9/h"}, headers=auth
        )
    ).json()
    number = await provision(client, auth, "plivo", account["id"], agentId=agent["id"])
    fake.deliver_to = (pv.PUBLIC_URL, pv.origin(client))
    plivo_account = fake.accounts[pv.AUTH_A]
    app = plivo_account.applications[plivo_account.number_apps[number["phoneNumber"]]]
    async with aiohttp.ClientSession() as http:
        call = await fake.incoming_call(http, app["answer_url"], pv.CALLER, number["phoneNumber"])
    assert call.status == 200, call.answer
    assert call.stream_url is not None and "/media/plivo?token=" in call.stream_url


async def test_a_toll_free_number_and_no_mobile_one(client, auth, plivo):
    account = await pv.add_account(client, auth)
    number = await provision(client, auth, "plivo", account["id"], type="toll_free")
    assert number["phoneNumber"].startswith("+1800555")
    refused = await provision(client, auth, "plivo", account["id"], 409, type="mobile")
    assert refused["error"]["code"] == "no_number_available"
    assert "mobile" in refused["error"]["message"]


async def test_a_released_number_is_given_back_to_plivo(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    number = await provision(client, auth, "plivo", account["id"])
    phone = number["phoneNumber"]
    resp = await client.delete(f"/v1/numbers/{number['id']}", headers=auth)
    assert resp.status == 200, await resp.text()
    assert fake.phone_numbers.released == [phone]
    assert ("DELETE", f"/v1/Account/{pv.AUTH_A}/Number/{phone[1:]}/") in fake.requests
    assert phone not in fake.phone_numbers.rented
    assert await numbers(client, auth) == []


async def test_an_imported_plivo_number_released_stays_rented(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    imported = await pv.import_number(client, auth, pv.NUMBER_A, account["id"])
    resp = await client.delete(f"/v1/numbers/{imported['id']}", headers=auth)
    assert resp.status == 200
    assert fake.phone_numbers.released == []
    assert not any(m == "DELETE" and "/Number/" in p for m, p in fake.requests)


async def test_plivo_numbers_need_a_carrier_account(client, auth):
    resp = await client.post("/v1/numbers", json={"provider": "plivo"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "carrier_account_required"


@pytest.mark.parametrize(("status", "code"), [(500, "carrier_unavailable"), (400, "carrier_error")])
async def test_a_rent_plivo_refuses_stores_nothing(client, auth, plivo, status, code):
    account = await pv.add_account(client, auth)
    plivo[0].phone_numbers.buy_status = status
    refused = await provision(client, auth, "plivo", account["id"], 502)
    assert refused["error"]["code"] == code
    assert await numbers(client, auth) == []


async def test_plivo_down_or_silent_stores_nothing(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    fake.down = True
    refused = await provision(client, auth, "plivo", account["id"], 502)
    assert refused["error"]["code"] == "carrier_unavailable"
    fake.down, fake.phone_numbers.buy_stalls = False, True
    refused = await provision(client, auth, "plivo", account["id"], 502)
    assert refused["error"]["code"] == "carrier_unavailable"
    assert pv.TOKEN_A not in refused["error"]["message"]
    assert await numbers(client, auth) == []


async def test_a_number_another_request_stored_meanwhile_stays_and_another_is_rented(
    client, auth, plivo, make_key
):
    """The same account in a second project imports the number while the first rents it:
    the relay holds it (the import), so it stays rented, and the first gets another."""
    fake = plivo[0]
    other = await make_key("proj-b")
    account = await pv.add_account(client, auth)
    theirs = await pv.add_account(client, other)

    async def import_it(phone: str) -> None:
        fake.phone_numbers.before_buy_answer = None
        await pv.import_number(client, other, phone, theirs["id"])

    fake.phone_numbers.before_buy_answer = import_it
    number = await provision(client, auth, "plivo", account["id"], areaCode="212")
    [imported] = await numbers(client, other)
    assert number["phoneNumber"] != imported["phoneNumber"]
    assert set(fake.phone_numbers.rented) == {number["phoneNumber"], imported["phoneNumber"]}
    assert fake.phone_numbers.released == []


async def test_a_number_that_cannot_be_stored_is_given_back(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    async with store_broken_by(client) as break_it:
        fake.phone_numbers.before_buy_answer = break_it
        refused = await provision(client, auth, "plivo", account["id"], 503)
    [phone] = fake.phone_numbers.released
    assert refused["error"]["code"] == "number_not_stored"
    assert phone in refused["error"]["message"]
    assert fake.phone_numbers.rented == {}
    assert await numbers(client, auth) == []


async def test_a_number_neither_stored_nor_given_back_is_named(client, auth, plivo):
    fake = plivo[0]
    account = await pv.add_account(client, auth)
    async with store_broken_by(client) as break_it:

        async def break_both(phone: str) -> None:
            await break_it(phone)
            fake.down = True  # the release that follows fails too

        fake.phone_numbers.before_buy_answer = break_both
        refused = await provision(client, auth, "plivo", account["id"], 502)
    [phone] = fake.phone_numbers.rented
    assert refused["error"]["code"] == "number_release_failed"
    assert phone in refused["error"]["message"]
    assert "release it at Plivo" in refused["error"]["message"]
    assert await numbers(client, auth) == []
