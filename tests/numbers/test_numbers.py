"""/v1/numbers: provisioning from the sim carrier, import, binding, release, listing."""

from __future__ import annotations

import asyncio
import re

import phonenumbers
import pytest

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}
IMPORT = {"provider": "twilio", "phoneNumber": "+14155550123", "credentialsRef": "main"}


def assert_valid_e164(number: str, region: str) -> None:
    assert re.fullmatch(r"\+[1-9][0-9]{6,14}", number), number
    parsed = phonenumbers.parse(number)
    assert phonenumbers.is_valid_number(parsed), number
    assert phonenumbers.region_code_for_number(parsed) == region, number


async def provision(client, auth, status: int = 201, **body) -> dict:
    resp = await client.post("/v1/numbers", json=body, headers=auth)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def new_agent(client, auth, name: str = "Ava") -> dict:
    resp = await client.post("/v1/agents", json={**AGENT, "name": name}, headers=auth)
    assert resp.status == 201
    return await resp.json()


async def test_provision_defaults_to_a_us_sim_number(client, auth):
    number = await provision(client, auth)
    assert number["id"].startswith("num_")
    assert number["object"] == "number"
    assert number["provider"] == "sim"
    assert number["source"] == "provisioned"
    assert number["country"] == "US"
    assert number["agentId"] is None
    assert number["credentialsRef"] is None
    assert sorted(number["capabilities"]) == ["sms", "voice"]
    assert re.fullmatch(r"\+1[2-9][0-9]{2}5550(1[0-9]{2})", number["phoneNumber"])
    assert_valid_e164(number["phoneNumber"], "US")


async def test_area_code_is_honoured(client, auth):
    for _ in range(3):
        number = await provision(client, auth, areaCode="415")
        assert re.fullmatch(r"\+14155550(1[0-9]{2})", number["phoneNumber"])
        assert_valid_e164(number["phoneNumber"], "US")


@pytest.mark.parametrize(
    ("body", "pattern", "region"),
    [
        ({"country": "GB"}, r"\+4420794600[0-9]{2}|\+442079460[0-9]{3}", "GB"),
        ({"country": "gb", "areaCode": "20"}, r"\+442079460[0-9]{3}", "GB"),
        ({"country": "AU"}, r"\+6125550[0-9]{4}|\+61491570[0-9]{3}", "AU"),
        ({"country": "AU", "areaCode": "491"}, r"\+61491570[0-9]{3}", "AU"),
        ({"country": "CA"}, r"\+1[2-9][0-9]{2}5550(1[0-9]{2})", "CA"),
    ],
)
async def test_other_countries_come_from_their_fiction_ranges(client, auth, body, pattern, region):
    number = await provision(client, auth, **body)
    assert re.fullmatch(pattern, number["phoneNumber"]), number["phoneNumber"]
    assert number["country"] == region
    assert_valid_e164(number["phoneNumber"], region)


@pytest.mark.parametrize(
    "body",
    [
        {"country": "FR"},
        {"country": "GB", "areaCode": "161"},
        {"country": "US", "areaCode": "41"},  # not a North American area code
        {"country": "US", "areaCode": "0415"},
        {"country": "US", "areaCode": "155"},  # area codes never start with 0 or 1
        {"country": "US", "areaCode": "416"},  # Toronto: a Canadian number, not a US one
    ],
)
async def test_no_number_in_range_is_409(client, auth, body):
    err = (await provision(client, auth, 409, **body))["error"]
    assert err["code"] == "no_number_available"
    assert "sim" in err["message"]
    assert (await (await client.get("/v1/numbers", headers=auth)).json())["data"] == []


async def test_area_code_runs_out_after_100_and_a_release_frees_one(client, auth):
    numbers = [await provision(client, auth, areaCode="212") for _ in range(100)]
    phones = {n["phoneNumber"] for n in numbers}
    assert phones == {f"+12125550{n}" for n in range(100, 200)}
    err = (await provision(client, auth, 409, areaCode="212"))["error"]
    assert err["code"] == "no_number_available"

    released = numbers[42]
    resp = await client.delete(f"/v1/numbers/{released['id']}", headers=auth)
    assert resp.status == 200
    again = await provision(client, auth, areaCode="212")
    assert again["phoneNumber"] == released["phoneNumber"]
    assert again["id"] != released["id"]


async def test_unknown_provider_is_422(client, auth):
    err = (await provision(client, auth, 422, provider="acme"))["error"]
    assert err["code"] == "unknown_provider"
    assert err["field"] == "provider"
    assert "sim" in err["message"]


async def test_bad_create_fields_are_422(client, auth):
    resp = await client.post(
        "/v1/numbers", json={"country": "U1", "areaCode": "4a5", "colour": "red"}, headers=auth
    )
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert {d["field"] for d in err["details"]} == {"country", "areaCode", "colour"}


@pytest.mark.parametrize(
    ("given", "e164", "country"),
    [
        ("+1 415-555-0123", "+14155550123", "US"),
        ("+1 (415) 555-0123", "+14155550123", "US"),
        ("+14155550123", "+14155550123", "US"),
        ("+44 20 7946 0123", "+442079460123", "GB"),
    ],
)
async def test_import_normalises_to_e164(client, auth, given, e164, country):
    resp = await client.post(
        "/v1/numbers/import",
        json={**IMPORT, "phoneNumber": given, "providerSid": "PN123"},
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    number = await resp.json()
    assert number["phoneNumber"] == e164
    assert number["country"] == country
    assert number["source"] == "imported"
    assert number["provider"] == "twilio"
    assert number["credentialsRef"] == "main"
    got = await (await client.get(f"/v1/numbers/{number['id']}", headers=auth)).json()
    assert got == number


@pytest.mark.parametrize("given", ["(415) 555-0123", "+1 555", "not a number", "+999123456789"])
async def test_import_refuses_invalid_numbers(client, auth, given):
    resp = await client.post(
        "/v1/numbers/import", json={**IMPORT, "phoneNumber": given}, headers=auth
    )
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_phone_number"
    assert err["field"] == "phoneNumber"
    assert "E.164" in err["message"]


async def test_import_needs_a_known_provider(client, auth):
    resp = await client.post(
        "/v1/numbers/import", json={"provider": "acme", "phoneNumber": "+14155550123"}, headers=auth
    )
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"provider"}


async def test_duplicate_import_is_409_whatever_the_spelling(client, auth):
    assert (await client.post("/v1/numbers/import", json=IMPORT, headers=auth)).status == 201
    resp = await client.post(
        "/v1/numbers/import", json={**IMPORT, "phoneNumber": "+1 (415) 555-0123"}, headers=auth
    )
    assert resp.status == 409
    err = (await resp.json())["error"]
    assert err["code"] == "phone_number_taken"
    assert err["field"] == "phoneNumber"


async def test_sim_never_hands_out_an_imported_number(client, auth):
    for n in range(100, 199):  # import all of +1 303 555 0100..0198
        body = {**IMPORT, "phoneNumber": f"+1303555{n:04d}"}
        assert (await client.post("/v1/numbers/import", json=body, headers=auth)).status == 201
    number = await provision(client, auth, areaCode="303")
    assert number["phoneNumber"] == "+13035550199"


async def test_bind_and_unbind(client, auth):
    agent = await new_agent(client, auth)
    number = await provision(client, auth)
    url = f"/v1/numbers/{number['id']}"

    resp = await client.patch(url, json={"agentId": agent["id"]}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["agentId"] == agent["id"]
    got = await (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).json()
    assert got["numberIds"] == [number["id"]]

    resp = await client.patch(url, json={"agentId": None}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["agentId"] is None
    assert (await (await client.get(url, headers=auth)).json())["agentId"] is None
    got = await (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).json()
    assert got["numberIds"] == []

    # agentId must be given (null to unbind): an empty PATCH is a mistake, not a no-op.
    resp = await client.patch(url, json={}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "agentId"


async def test_binding_to_a_missing_or_deleted_agent_is_404(client, auth):
    agent = await new_agent(client, auth)
    number = await provision(client, auth)
    assert (await client.delete(f"/v1/agents/{agent['id']}", headers=auth)).status == 200
    for agent_id in (agent["id"], "agt_doesnotexist"):
        resp = await client.patch(
            f"/v1/numbers/{number['id']}", json={"agentId": agent_id}, headers=auth
        )
        assert resp.status == 404
        err = (await resp.json())["error"]
        assert err["code"] == "not_found"
        assert err["field"] == "agentId"
        err = (await provision(client, auth, 404, agentId=agent_id))["error"]
        assert err["field"] == "agentId"
        resp = await client.post(
            "/v1/numbers/import", json={**IMPORT, "agentId": agent_id}, headers=auth
        )
        assert resp.status == 404
    got = await (await client.get(f"/v1/numbers/{number['id']}", headers=auth)).json()
    assert got["agentId"] is None
    numbers = (await (await client.get("/v1/numbers", headers=auth)).json())["data"]
    assert [n["id"] for n in numbers] == [number["id"]]


async def test_a_number_answers_for_one_agent_at_most(client, auth):
    first = await new_agent(client, auth, "first")
    second = await new_agent(client, auth, "second")
    number = await provision(client, auth, agentId=first["id"])
    assert number["agentId"] == first["id"]

    resp = await client.patch(
        f"/v1/numbers/{number['id']}", json={"agentId": second["id"]}, headers=auth
    )
    assert resp.status == 200
    assert (await resp.json())["agentId"] == second["id"]
    one = await (await client.get(f"/v1/agents/{first['id']}", headers=auth)).json()
    two = await (await client.get(f"/v1/agents/{second['id']}", headers=auth)).json()
    assert one["numberIds"] == []
    assert two["numberIds"] == [number["id"]]
    listed = (await (await client.get("/v1/agents", headers=auth)).json())["data"]
    assert {a["id"]: a["numberIds"] for a in listed} == {
        first["id"]: [],
        second["id"]: [number["id"]],
    }


async def test_release_then_404_and_the_phone_number_is_free_again(client, auth):
    agent = await new_agent(client, auth)
    imported = await (
        await client.post(
            "/v1/numbers/import", json={**IMPORT, "agentId": agent["id"]}, headers=auth
        )
    ).json()
    provisioned = await provision(client, auth, areaCode="617")

    for number in (imported, provisioned):
        url = f"/v1/numbers/{number['id']}"
        resp = await client.delete(url, headers=auth)
        assert resp.status == 200
        assert await resp.json() == {"id": number["id"], "object": "number", "deleted": True}
        for method in ("GET", "DELETE"):
            resp = await client.request(method, url, headers=auth)
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        resp = await client.patch(url, json={"agentId": None}, headers=auth)
        assert resp.status == 404

    assert (await (await client.get("/v1/numbers", headers=auth)).json())["data"] == []
    got = await (await client.get(f"/v1/agents/{agent['id']}", headers=auth)).json()
    assert got["numberIds"] == []

    again = await client.post("/v1/numbers/import", json=IMPORT, headers=auth)
    assert again.status == 201
    assert (await again.json())["phoneNumber"] == imported["phoneNumber"]
    again = await client.post(
        "/v1/numbers/import",
        json={**IMPORT, "phoneNumber": provisioned["phoneNumber"]},
        headers=auth,
    )
    assert again.status == 201


async def test_list_filters_by_agent_and_pages(client, auth):
    agent = await new_agent(client, auth)
    other = await new_agent(client, auth, "other")
    bound = [(await provision(client, auth, agentId=agent["id"]))["id"] for _ in range(5)]
    await provision(client, auth, agentId=other["id"])
    await provision(client, auth)

    everything = await (await client.get("/v1/numbers", headers=auth)).json()
    assert len(everything["data"]) == 7
    assert everything["hasMore"] is False
    assert everything["nextCursor"] is None

    seen, cursor, pages = [], None, 0
    while True:
        params = {"agentId": agent["id"], "limit": "2"} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/v1/numbers", params=params, headers=auth)
        assert resp.status == 200
        page = await resp.json()
        pages += 1
        assert all(n["agentId"] == agent["id"] for n in page["data"])
        seen += [n["id"] for n in page["data"]]
        if not page["hasMore"]:
            assert page["nextCursor"] is None
            break
        cursor = page["nextCursor"]
    assert pages == 3
    assert seen == list(reversed(bound))

    resp = await client.get("/v1/numbers", params={"cursor": "%%%"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "cursor"


async def test_concurrent_provisioning_gives_distinct_numbers(client, auth):
    responses = await asyncio.gather(
        *(client.post("/v1/numbers", json={}, headers=auth) for _ in range(20))
    )
    assert [r.status for r in responses] == [201] * 20
    numbers = [await r.json() for r in responses]
    phones = [n["phoneNumber"] for n in numbers]
    assert len(set(phones)) == 20
    for phone in phones:
        assert_valid_e164(phone, "US")
    listed = await (await client.get("/v1/numbers", params={"limit": "50"}, headers=auth)).json()
    assert sorted(n["phoneNumber"] for n in listed["data"]) == sorted(phones)
