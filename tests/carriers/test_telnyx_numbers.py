"""Telnyx numbers provisioned through ``POST /v1/numbers`` against the fake Telnyx: searched
(``available_phone_numbers``), ordered on the account's Call Control Application and
messaging profile (``number_orders``), released (``DELETE /v2/phone_numbers/{id}``); a
Telnyx failure answers a stable code and stores nothing, and a number bought but not stored
is given back."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from relay.config import Settings
from relay.state import APP_STATE
from relay.store.models import Call, Number
from relay_numbers.keys import telnyx_key
from tests.carriers.numbers_support import numbers, provision, store_broken_by
from tests.carriers.telnyx_support import CALLER, add_account, deliver_to_relay


@pytest.fixture
def settings(telnyx_settings) -> Settings:
    return telnyx_settings.model_copy(update={"carrier_api_timeout_seconds": 1.0})


async def test_a_number_is_ordered_on_the_accounts_application_and_profile(
    client, auth, fake, account_a
):
    account = await add_account(client, auth, fake, account_a)
    number = await provision(client, auth, "telnyx", account["id"], areaCode="212")
    phone = number["phoneNumber"]
    assert phone.startswith("+1212555")
    assert (number["provider"], number["source"]) == ("telnyx", "provisioned")
    assert number["carrierAccountId"] == account["id"]
    ordered = fake.phone_numbers.ordered[phone]
    assert (ordered.api_key, ordered.connection_id, ordered.messaging_profile_id) == (
        account_a.api_key,
        account_a.connection_id,
        account_a.messaging_profile_id,
    )
    [search] = fake.phone_numbers.searches
    assert search.getall("filter[features][]") == ["voice", "sms"]
    assert (search["filter[national_destination_code]"], search["filter[phone_number_type]"]) == (
        "212",
        "local",
    )
    [order] = [body for m, p, body in fake.requests if (m, p) == ("POST", "/v2/number_orders")]
    assert order == {
        "phone_numbers": [{"phone_number": phone}],
        "connection_id": account_a.connection_id,
        "messaging_profile_id": account_a.messaging_profile_id,
    }
    async with client.app[APP_STATE].db.session() as session:
        row = await session.get(Number, number["id"])
    assert row.carrier_key == telnyx_key(account_a.connection_id)


async def test_a_call_to_an_ordered_number_is_answered_for_its_agent(client, auth, fake, account_a):
    """Ordered, the number is on the application: Telnyx's call.initiated for it is answered
    with a stream to the relay, for the agent it was provisioned for."""
    account = await add_account(client, auth, fake, account_a)
    body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/h"}
    agent = await (await client.post("/v1/agents", json=body, headers=auth)).json()
    number = await provision(client, auth, "telnyx", account["id"], agentId=agent["id"])
    deliver_to_relay(fake, client)
    call = await fake.place_call(account_a, CALLER, number["phoneNumber"], [])
    [answer] = [p for m, p, _ in fake.requests if p.endswith("/actions/answer")]
    assert answer == f"/v2/calls/{call.call_control_id}/actions/answer"
    async with client.app[APP_STATE].db.session() as session:
        [row] = (await session.execute(select(Call))).scalars().all()
    assert (row.to_number, row.agent_id, row.connection_type) == (
        number["phoneNumber"],
        agent["id"],
        "telnyx",
    )


async def test_a_toll_free_number_and_no_mobile_one(client, auth, fake, account_a):
    account = await add_account(client, auth, fake, account_a)
    number = await provision(client, auth, "telnyx", account["id"], type="toll_free")
    assert number["phoneNumber"].startswith("+1800555")
    refused = await provision(client, auth, "telnyx", account["id"], 409, type="mobile")
    assert refused["error"]["code"] == "no_number_available"
    assert "mobile" in refused["error"]["message"]


async def test_a_released_number_is_deleted_at_telnyx(client, auth, fake, account_a):
    account = await add_account(client, auth, fake, account_a)
    number = await provision(client, auth, "telnyx", account["id"])
    ordered = fake.phone_numbers.ordered[number["phoneNumber"]]
    resp = await client.delete(f"/v1/numbers/{number['id']}", headers=auth)
    assert resp.status == 200, await resp.text()
    assert fake.phone_numbers.released == [number["phoneNumber"]]
    assert ("DELETE", f"/v2/phone_numbers/{ordered.id}", None) in fake.requests
    assert await numbers(client, auth) == []


async def test_telnyx_numbers_need_a_carrier_account(client, auth):
    resp = await client.post("/v1/numbers", json={"provider": "telnyx"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "carrier_account_required"


@pytest.mark.parametrize(("status", "code"), [(500, "carrier_unavailable"), (422, "carrier_error")])
async def test_an_order_telnyx_refuses_stores_nothing(client, auth, fake, account_a, status, code):
    account = await add_account(client, auth, fake, account_a)
    fake.phone_numbers.order_status = status
    refused = await provision(client, auth, "telnyx", account["id"], 502)
    assert refused["error"]["code"] == code
    assert await numbers(client, auth) == []


async def test_telnyx_down_or_silent_stores_nothing(client, auth, fake, account_a):
    account = await add_account(client, auth, fake, account_a)
    fake.down = True
    refused = await provision(client, auth, "telnyx", account["id"], 502)
    assert refused["error"]["code"] == "carrier_unavailable"
    fake.down, fake.phone_numbers.order_stalls = False, True
    refused = await provision(client, auth, "telnyx", account["id"], 502)
    assert refused["error"]["code"] == "carrier_unavailable"
    assert account_a.api_key not in refused["error"]["message"]
    assert await numbers(client, auth) == []


async def test_a_number_another_request_stored_meanwhile_stays_its_and_another_is_ordered(
    client, auth, fake, account_a, make_key
):
    """The same account in a second project imports the number while the first orders it:
    the number is the relay's (the import's), so it stays bought, and the order goes on."""
    other = await make_key("proj-b")
    account = await add_account(client, auth, fake, account_a)
    their_account = await add_account(client, other, fake, account_a)

    async def import_it(phone: str) -> None:
        fake.phone_numbers.before_order_answer = None
        body = {"provider": "telnyx", "phoneNumber": phone, "carrierAccountId": their_account["id"]}
        resp = await client.post("/v1/numbers/import", json=body, headers=other)
        assert resp.status == 201, await resp.text()

    fake.phone_numbers.before_order_answer = import_it
    number = await provision(client, auth, "telnyx", account["id"], areaCode="212")
    [theirs] = await numbers(client, other)
    assert number["phoneNumber"] != theirs["phoneNumber"]
    assert set(fake.phone_numbers.ordered) == {number["phoneNumber"], theirs["phoneNumber"]}
    assert fake.phone_numbers.released == []


async def test_a_number_that_cannot_be_stored_is_given_back(client, auth, fake, account_a):
    account = await add_account(client, auth, fake, account_a)
    async with store_broken_by(client) as break_it:
        fake.phone_numbers.before_order_answer = break_it
        refused = await provision(client, auth, "telnyx", account["id"], 503)
    [phone] = fake.phone_numbers.released
    assert refused["error"]["code"] == "number_not_stored"
    assert phone in refused["error"]["message"]
    assert fake.phone_numbers.ordered == {}
    assert await numbers(client, auth) == []


async def test_a_number_neither_stored_nor_given_back_is_named(client, auth, fake, account_a):
    account = await add_account(client, auth, fake, account_a)
    async with store_broken_by(client) as break_it:

        async def break_both(phone: str) -> None:
            await break_it(phone)
            fake.down = True  # the release that follows fails too

        fake.phone_numbers.before_order_answer = break_both
        refused = await provision(client, auth, "telnyx", account["id"], 502)
    [phone] = fake.phone_numbers.ordered
    assert refused["error"]["code"] == "number_release_failed"
    assert phone in refused["error"]["message"]
    assert "release it at Telnyx" in refused["error"]["message"]
    assert await numbers(client, auth) == []
