"""The do-not-contact list (/v1/dnc): what a project lists itself, beside what STOP listed,
checked by every outbound call and text."""

from __future__ import annotations

from tests.sms.conftest import HANDSET, make_agent, sim_text

OTHER = "+12025550199"


async def _call(client, auth, agent, to=HANDSET):
    return await client.post("/v1/calls", json={"agentId": agent.id, "to": to}, headers=auth)


async def _text(client, auth, agent, to=HANDSET):
    return await client.post(
        "/v1/messages", json={"agentId": agent.id, "to": to, "text": "Sale today!"}, headers=auth
    )


async def _add(client, auth, *numbers, **extra):
    resp = await client.post("/v1/dnc", json={"numbers": list(numbers), **extra}, headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_a_listed_number_gets_no_call_and_no_text(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    summary = await _add(client, auth, HANDSET, reason="asked us by email", source="crm")
    assert (summary["added"], summary["alreadyListed"], summary["invalidCount"]) == (1, 0, 0)
    for send in (_call, _text):
        resp = await send(client, auth, agent)
        assert resp.status == 409, await resp.text()
        error = (await resp.json())["error"]
        assert (error["code"], error["field"]) == ("dnc_conflict", "to")
    assert (await (await client.get("/v1/calls", headers=auth)).json())["data"] == []
    assert (await _call(client, auth, agent, to=OTHER)).status == 202
    entry = await (await client.get(f"/v1/dnc/{HANDSET}", headers=auth)).json()
    assert entry["phoneNumber"] == HANDSET and entry["listedBy"] == "project"
    assert (entry["reason"], entry["source"]) == ("asked us by email", "crm")


async def test_invalid_and_repeated_numbers_are_reported_and_the_rest_listed(client, auth):
    summary = await _add(client, auth, HANDSET, "12345", HANDSET, "not a number", OTHER)
    assert (summary["added"], summary["duplicates"], summary["invalidCount"]) == (2, 1, 2)
    assert [(i["index"], i["code"]) for i in summary["invalid"]] == [
        (1, "invalid_phone_number"),
        (3, "invalid_phone_number"),
    ]
    again = await _add(client, auth, HANDSET)
    assert (again["added"], again["alreadyListed"]) == (0, 1)
    listed = await (await client.get("/v1/dnc", headers=auth)).json()
    assert sorted(e["phoneNumber"] for e in listed["data"]) == sorted([HANDSET, OTHER])


async def test_a_csv_of_thousands_of_rows_is_imported_with_a_summary(client, auth, hook):
    numbers = [f"+1202555{n:04d}" for n in range(3000)]
    lines = ["phone_number,reason", *(f"{n},do not call" for n in numbers[:2000])]
    lines += [*numbers[2000:], "", "+1202555000", numbers[0], '"+1 (415) 555-0142"']
    resp = await client.post(
        "/v1/dnc/import", json={"csv": "\n".join(lines), "reason": "bulk"}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    summary = await resp.json()
    assert summary["added"] == 3001  # and +14155550142, written with spaces and brackets
    assert (summary["duplicates"], summary["invalidCount"]) == (1, 1)
    assert summary["invalid"][0]["index"] == 3003  # its line in the file, header included
    first = await (await client.get(f"/v1/dnc/{numbers[0]}", headers=auth)).json()
    assert (first["reason"], first["source"]) == ("do not call", "csv")
    last = await (await client.get(f"/v1/dnc/{numbers[-1]}", headers=auth)).json()
    assert last["reason"] == "bulk"
    agent = await make_agent(client, auth, hook)
    assert (await _call(client, auth, agent, to=numbers[1500])).status == 409


async def test_a_file_that_is_not_csv_is_422(client, auth):
    huge_field = '"' + "x" * 200_000 + '"'
    resp = await client.post("/v1/dnc/import", json={"csv": huge_field}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "invalid_csv"


async def test_removing_a_number_lets_calls_through_again(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await _add(client, auth, HANDSET)
    resp = await client.delete(f"/v1/dnc/{HANDSET}", headers=auth)
    assert resp.status == 204
    assert (await _call(client, auth, agent)).status == 202
    again = await client.delete(f"/v1/dnc/{HANDSET}", headers=auth)
    assert again.status == 404
    assert (await again.json())["error"]["code"] == "not_listed"
    missing = await client.get(f"/v1/dnc/{HANDSET}", headers=auth)
    assert (await missing.json())["error"]["code"] == "not_listed"


async def test_stop_lands_on_the_list_and_only_the_recipient_lifts_it(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await sim_text(client, auth, agent.number, "STOP")
    for written in (HANDSET, HANDSET[1:], f"{HANDSET[1:]} "):  # "+" left unencoded: a space
        resp = await client.get("/v1/dnc", params={"phoneNumber": written}, headers=auth)
        listed = await resp.json()
        assert [(e["listedBy"], e["keyword"]) for e in listed["data"]] == [("recipient", "STOP")]
    resp = await client.delete(f"/v1/dnc/{HANDSET}", headers=auth)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "listed_by_recipient"
    await sim_text(client, auth, agent.number, "START")
    assert (await _call(client, auth, agent)).status == 202


async def test_start_lifts_only_what_stop_listed(client, auth, hook):
    agent = await make_agent(client, auth, hook)
    await _add(client, auth, HANDSET, reason="legal hold")
    await sim_text(client, auth, agent.number, "STOP")
    await sim_text(client, auth, agent.number, "START")
    resp = await _call(client, auth, agent)
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "dnc_conflict"
    # And a number the project lists after its STOP stays listed after its START.
    await sim_text(client, auth, agent.number, "STOP", frm=OTHER)
    await _add(client, auth, OTHER)
    await sim_text(client, auth, agent.number, "START", frm=OTHER)
    assert (await _call(client, auth, agent, to=OTHER)).status == 409


async def test_one_projects_list_is_its_own(client, auth, hook, make_key):
    await _add(client, auth, HANDSET)
    other_auth = await make_key("proj-b")
    other = await make_agent(client, other_auth, hook)
    assert (await _call(client, other_auth, other)).status == 202
    assert (await client.get(f"/v1/dnc/{HANDSET}", headers=other_auth)).status == 404
    assert (await (await client.get("/v1/dnc", headers=other_auth)).json())["data"] == []
    assert (await client.delete(f"/v1/dnc/{HANDSET}", headers=other_auth)).status == 404
