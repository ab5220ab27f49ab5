"""``/v1/keys``: list (never a secret), create, revoke (401 at once), rotate (with a grace)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from relay.store.models import ApiKey

PUBLISHABLE_ONLY = (
    "allowedOrigins",
    "allowedDestinations",
    "allowVariables",
    "allowPostCall",
    "maxMetadataBytes",
)


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def listed(client, headers, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/keys", params=query, headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        out += body["data"]
        if not body["hasMore"]:
            return out
        cursor = body["nextCursor"]


async def new_key(client, headers, **body) -> dict:
    resp = await client.post("/v1/keys", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_list_shows_this_projects_keys_by_hint_and_never_a_secret(client, raw_key, database):
    mine = await raw_key("proj-a", name="ci")
    web = await raw_key("proj-a", kind="publishable", channels=["web", "phone"])
    theirs = await raw_key("proj-b")

    resp = await client.get("/v1/keys", headers=bearer(mine))
    text = await resp.text()
    for raw in (mine, web, theirs):
        assert raw not in text and raw[7:] not in text
    keys = await listed(client, bearer(mine), limit=1)  # one a page: the cursor works too
    assert [k["id"] for k in keys] == sorted((k["id"] for k in keys), reverse=True)
    by_hint = {k["hint"]: k for k in keys}
    assert set(by_hint) == {mine[:7], web[:7]}
    secret, publishable = by_hint[mine[:7]], by_hint[web[:7]]
    assert (secret["kind"], publishable["kind"]) == ("secret", "publishable")
    assert secret["id"].startswith("key_") and secret["object"] == "api_key"
    assert (secret["name"], secret["agents"], secret["channels"]) == ("ci", None, None)
    assert publishable["channels"] == ["web", "phone"]
    assert secret["revokedAt"] is None and secret["createdAt"].endswith("Z")
    assert set(secret) == {
        "id", "object", "kind", "name", "hint", "agents", "channels", "createdAt", "revokedAt",
        *PUBLISHABLE_ONLY,
    }  # fmt: skip
    assert {name: secret[name] for name in PUBLISHABLE_ONLY} == dict.fromkeys(PUBLISHABLE_ONLY)
    # What a publishable key made with no more than its channels may do.
    assert {name: publishable[name] for name in PUBLISHABLE_ONLY} == {
        "allowedOrigins": [],
        "allowedDestinations": None,
        "allowVariables": False,
        "allowPostCall": False,
        "maxMetadataBytes": 1024,
    }
    async with database.session() as session:
        hashes = set(await session.scalars(select(ApiKey.key_hash)))
    assert not any(h in text for h in hashes)

    other = await listed(client, bearer(theirs))
    assert [k["hint"] for k in other] == [theirs[:7]]


async def test_create_shows_the_key_once_and_it_works(client, auth):
    made = await new_key(client, auth, name="deploy")
    assert made["key"].startswith("sk_") and made["hint"] == made["key"][:7]
    assert (made["kind"], made["name"], made["revokedAt"]) == ("secret", "deploy", None)
    assert (await client.get("/v1/agents", headers=bearer(made["key"]))).status == 200
    assert all("key" not in k for k in await listed(client, auth))

    agent = await (
        await client.post(
            "/v1/agents", json={"name": "A", "webhookUrl": "http://127.0.0.1:9/x"}, headers=auth
        )
    ).json()
    pk = await new_key(
        client, auth, kind="publishable", agents=[agent["id"]], channels=["web", "web", "phone"]
    )
    assert pk["key"].startswith("pk_")
    assert (pk["agents"], pk["channels"]) == ([agent["id"]], ["web", "phone"])
    assert (await new_key(client, auth, kind="publishable"))["channels"] == ["web"]


PK = {"kind": "publishable"}
PHONE = {"kind": "publishable", "channels": ["phone"]}


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"channels": ["web"]}, "channels", "validation_error"),  # a secret key has no scopes
        ({"kind": "secret", "agents": ["agt_x"]}, "agents", "validation_error"),
        ({"kind": "publishable", "channels": ["fax"]}, "channels", "validation_error"),
        ({"kind": "publishable", "channels": []}, "channels", "validation_error"),
        ({"kind": "root"}, "kind", "validation_error"),
        ({"name": "x" * 201}, "name", "validation_error"),
        ({"expires": 1}, "expires", "validation_error"),
        ({"kind": "publishable", "agents": ["agt_nope"]}, "agents", "unknown_agent"),
        # What a page may do is chosen for publishable keys only.
        ({"allowedOrigins": ["https://example.com"]}, "allowedOrigins", "validation_error"),
        ({"allowVariables": False}, "allowVariables", "validation_error"),
        ({"maxMetadataBytes": 10}, "maxMetadataBytes", "validation_error"),
        # Origins as a browser sends them, each page listed: no wildcard, path or credentials.
        ({**PK, "allowedOrigins": ["*"]}, "allowedOrigins.0", "validation_error"),
        (
            {**PK, "allowedOrigins": ["https://*.example.com"]},
            "allowedOrigins.0",
            "validation_error",
        ),
        (
            {**PK, "allowedOrigins": ["https://example.com/app"]},
            "allowedOrigins.0",
            "validation_error",
        ),
        ({**PK, "allowedOrigins": ["example.com"]}, "allowedOrigins.0", "validation_error"),
        ({**PK, "allowedOrigins": ["null"]}, "allowedOrigins.0", "validation_error"),
        (
            {**PK, "allowedOrigins": ["https://u:p@example.com"]},
            "allowedOrigins.0",
            "validation_error",
        ),
        ({**PK, "allowedOrigins": ["ftp://example.com"]}, "allowedOrigins.0", "validation_error"),
        ({**PK, "allowedOrigins": []}, "allowedOrigins", "validation_error"),
        # Destinations: E.164 numbers or +prefix*, and only for keys that may phone.
        ({**PHONE, "allowedDestinations": ["+1415"]}, "allowedDestinations.0", "validation_error"),
        ({**PHONE, "allowedDestinations": ["1415*"]}, "allowedDestinations.0", "validation_error"),
        ({**PHONE, "allowedDestinations": ["+*"]}, "allowedDestinations.0", "validation_error"),
        ({**PHONE, "allowedDestinations": ["*"]}, "allowedDestinations.0", "validation_error"),
        (
            {**PHONE, "allowedDestinations": ["+1 415*"]},
            "allowedDestinations.0",
            "validation_error",
        ),
        ({**PHONE, "allowedDestinations": []}, "allowedDestinations", "validation_error"),
        ({**PK, "allowedDestinations": ["+1415*"]}, "allowedDestinations", "validation_error"),
        ({**PK, "allowVariables": "yes"}, "allowVariables", "validation_error"),
        ({**PK, "maxMetadataBytes": -1}, "maxMetadataBytes", "validation_error"),
        ({**PK, "maxMetadataBytes": 16 * 1024 + 1}, "maxMetadataBytes", "validation_error"),
    ],
)
async def test_create_refuses_bad_bodies_and_stores_nothing(client, auth, body, field, code):
    before = await listed(client, auth)
    err = await error_of(await client.post("/v1/keys", json=body, headers=auth), 422)
    assert (err["code"], err["field"]) == (code, field)
    assert err["details"][0]["field"] == field
    assert await listed(client, auth) == before


async def test_a_publishable_key_keeps_its_origins_destinations_and_allowances(client, auth):
    made = await new_key(
        client,
        auth,
        kind="publishable",
        channels=["phone"],
        allowedOrigins=[
            "https://Shop.Example.com:443",
            "http://localhost:3000",
            "https://bücher.de",
        ],
        allowedDestinations=["+1 (415) 555-0123", "+1415*", "+1415*", "+44*"],
        allowVariables=True,
        allowPostCall=True,
        maxMetadataBytes=4096,
    )
    expected = {
        # As browsers send them: lower case, no default port, international names in ASCII.
        "allowedOrigins": [
            "https://shop.example.com",
            "http://localhost:3000",
            "https://xn--bcher-kva.de",
        ],
        "allowedDestinations": ["+14155550123", "+1415*", "+44*"],
        "allowVariables": True,
        "allowPostCall": True,
        "maxMetadataBytes": 4096,
    }
    assert {name: made[name] for name in PUBLISHABLE_ONLY} == expected
    [row] = [k for k in await listed(client, auth) if k["id"] == made["id"]]
    assert {name: row[name] for name in PUBLISHABLE_ONLY} == expected
    rotated = await (await client.post(f"/v1/keys/{made['id']}/rotate", headers=auth)).json()
    assert {name: rotated[name] for name in PUBLISHABLE_ONLY} == expected


async def test_a_key_cannot_be_scoped_to_another_projects_agent(client, auth, make_key):
    other = await make_key("proj-b")
    agent = await (
        await client.post(
            "/v1/agents", json={"name": "B", "webhookUrl": "http://127.0.0.1:9/x"}, headers=other
        )
    ).json()
    resp = await client.post(
        "/v1/keys", json={"kind": "publishable", "agents": [agent["id"]]}, headers=auth
    )
    assert (await error_of(resp, 422))["code"] == "unknown_agent"


async def test_revoked_key_answers_401_at_once(client, auth):
    other = await new_key(client, auth)
    headers = bearer(other["key"])
    assert (await client.get("/v1/agents", headers=headers)).status == 200  # now cached

    resp = await client.post(f"/v1/keys/{other['id']}/revoke", headers=auth)
    assert resp.status == 200, await resp.text()
    revoked = await resp.json()
    assert revoked["id"] == other["id"] and revoked["revokedAt"] is not None
    assert "key" not in revoked

    err = await error_of(await client.get("/v1/agents", headers=headers), 401)
    assert err["code"] == "invalid_api_key"
    assert (await client.get("/v1/agents", headers=auth)).status == 200  # the caller's works
    # Again: nothing changes, and it answers the time it stopped.
    again = await (await client.post(f"/v1/keys/{other['id']}/revoke", headers=auth)).json()
    assert again["revokedAt"] == revoked["revokedAt"]
    [row] = [k for k in await listed(client, auth) if k["id"] == other["id"]]
    assert row["revokedAt"] == revoked["revokedAt"]


async def test_a_key_revokes_itself_only_when_it_says_so(client, auth):
    me = (await listed(client, auth))[0]
    path = f"/v1/keys/{me['id']}/revoke"
    for kwargs in ({}, {"json": {}}, {"json": {"confirmSelf": False}}):
        err = await error_of(await client.post(path, headers=auth, **kwargs), 409)
        assert (err["code"], err.get("field")) == ("cannot_revoke_self", None)
        assert "confirmSelf" in err["message"]
    assert (await client.get("/v1/agents", headers=auth)).status == 200

    resp = await client.post(path, json={"confirmSelf": True}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["revokedAt"] is not None
    err = await error_of(await client.get("/v1/agents", headers=auth), 401)
    assert err["code"] == "invalid_api_key"


async def test_rotate_gives_a_working_key_and_the_old_one_stops(client, auth, raw_key):
    old_raw = await raw_key("proj-a", kind="publishable", channels=["phone"], name="site")
    [old] = [k for k in await listed(client, auth) if k["hint"] == old_raw[:7]]
    assert (await client.get("/v1/agents", headers=bearer(old_raw))).status == 403  # cached

    resp = await client.post(f"/v1/keys/{old['id']}/rotate", headers=auth)
    assert resp.status == 201, await resp.text()
    new = await resp.json()
    assert new["key"].startswith("pk_") and new["id"] != old["id"]
    assert (new["kind"], new["name"], new["channels"]) == ("publishable", "site", ["phone"])
    assert new["replaced"]["id"] == old["id"]
    assert new["replaced"]["revokedAt"] is not None
    err = await error_of(await client.get("/v1/agents", headers=bearer(old_raw)), 401)
    assert err["code"] == "invalid_api_key"
    err = await error_of(await client.get("/v1/agents", headers=bearer(new["key"])), 403)
    assert err["code"] == "publishable_key_not_allowed"  # known, and still publishable

    err = await error_of(await client.post(f"/v1/keys/{old['id']}/rotate", headers=auth), 409)
    assert err["code"] == "key_not_rotatable"


async def test_a_rotated_key_works_until_its_grace_period_ends(client, app_client, auth):
    old = await new_key(client, auth, name="worker")
    resp = await client.post(f"/v1/keys/{old['id']}/rotate", json={"graceSeconds": 3}, headers=auth)
    assert resp.status == 201, await resp.text()
    new = await resp.json()
    until = datetime.fromisoformat(new["replaced"]["revokedAt"].replace("Z", "+00:00"))
    fresh = await app_client()  # another node, with nothing cached
    for node in (client, fresh):
        assert (await node.get("/v1/agents", headers=bearer(old["key"]))).status == 200
        assert (await node.get("/v1/agents", headers=bearer(new["key"]))).status == 200
    # Rotating it again is refused: its replacement is the one to rotate.
    resp = await client.post(f"/v1/keys/{old['id']}/rotate", headers=auth)
    assert (await error_of(resp, 409))["code"] == "key_not_rotatable"

    await asyncio.sleep((until - datetime.now(UTC)).total_seconds() + 0.1)
    for node in (client, fresh):  # both cached it as valid a moment ago
        err = await error_of(await node.get("/v1/agents", headers=bearer(old["key"])), 401)
        assert err["code"] == "invalid_api_key"
        assert (await node.get("/v1/agents", headers=bearer(new["key"]))).status == 200


async def test_rotate_refuses_a_bad_grace_period(client, auth):
    old = await new_key(client, auth)
    for grace in (-1, 7 * 24 * 3600 + 1, "soon"):
        resp = await client.post(
            f"/v1/keys/{old['id']}/rotate", json={"graceSeconds": grace}, headers=auth
        )
        assert (await error_of(resp, 422))["field"] == "graceSeconds"
    assert [k["revokedAt"] for k in await listed(client, auth) if k["id"] == old["id"]] == [None]


async def test_a_publishable_key_cannot_use_the_keys_api(client, auth, raw_key):
    [target] = await listed(client, auth)
    pk = bearer(await raw_key("proj-a", kind="publishable", channels=["web"]))
    for method, path, body in [
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {}),
        ("POST", f"/v1/keys/{target['id']}/revoke", {"confirmSelf": True}),
        ("POST", f"/v1/keys/{target['id']}/rotate", {}),
    ]:
        resp = await client.request(method, path, json=body, headers=pk)
        assert (await error_of(resp, 403))["code"] == "publishable_key_not_allowed", path
    assert (await client.get("/v1/agents", headers=auth)).status == 200
    assert [k["revokedAt"] for k in await listed(client, auth)] == [None, None]


async def test_another_projects_keys_answer_404_and_stay_untouched(client, auth, raw_key):
    theirs = await raw_key("proj-b")
    [their_key] = await listed(client, bearer(theirs))
    for action, body in (("revoke", {"confirmSelf": True}), ("rotate", {})):
        resp = await client.post(f"/v1/keys/{their_key['id']}/{action}", json=body, headers=auth)
        assert (await error_of(resp, 404))["code"] == "not_found"
    assert (await client.get("/v1/agents", headers=bearer(theirs))).status == 200
    assert await listed(client, bearer(theirs)) == [their_key]
    resp = await client.post("/v1/keys/key_nope/revoke", headers=auth)
    assert (await error_of(resp, 404))["code"] == "not_found"


async def test_openapi_documents_the_keys_api(client):
    doc = await (await client.get("/openapi.json")).json()
    assert set(doc["paths"]["/v1/keys"]) == {"get", "post"}
    assert "post" in doc["paths"]["/v1/keys/{key_id}/revoke"]
    assert "post" in doc["paths"]["/v1/keys/{key_id}/rotate"]
    assert "post" in doc["paths"]["/v1/webhook-endpoints/{endpoint_id}/rotate-secret"]
    schemas = doc["components"]["schemas"]
    create = schemas["KeyCreate"]["properties"]
    assert {"allowedOrigins", "allowedDestinations", "allowVariables", "allowPostCall"} <= set(
        create
    )
    assert create["maxMetadataBytes"]["anyOf"][0]["maximum"] == 16 * 1024
    assert "`*` is refused" in create["allowedOrigins"]["description"]
    assert set(PUBLISHABLE_ONLY) <= set(schemas["KeyOut"]["properties"])
    calls = doc["paths"]["/v1/calls"]["post"]["description"]
    for code in ("origin_not_allowed", "destination_not_allowed"):
        assert code in calls
