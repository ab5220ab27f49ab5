"""``/v1/webhook-endpoints``: create, read, update, delete, deliveries, retry; per project."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import WebhookVerificationError

from relay.store.models import WebhookDelivery, WebhookEndpoint
from tests.events.conftest import add_endpoint, emit_events, key_headers, project_id
from tests.events.test_delivery import settled

HOOK = "https://hooks.example.com/relay"


async def test_create_shows_the_secret_once(client, auth):
    created = await add_endpoint(
        client, auth, HOOK, events=["call.completed", "call.failed"], description="CRM"
    )
    assert created["id"].startswith("whe_")
    assert created["object"] == "webhook_endpoint"
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["call.completed", "call.failed"]
    assert created["enabled"] is True
    assert created["disabledReason"] is None
    assert created["description"] == "CRM"
    resp = await client.get(f"/v1/webhook-endpoints/{created['id']}", headers=auth)
    body = await resp.json()
    assert "secret" not in body
    assert body["url"] == HOOK
    assert (await add_endpoint(client, auth, HOOK))["secret"] != created["secret"]


async def test_create_validates_url_and_event_types(client, auth):
    for body, field, code in [
        ({"url": "ftp://x.example.com"}, "url", None),
        ({"url": HOOK, "events": ["call.exploded"]}, "events", None),
        ({"url": HOOK, "events": []}, "events", None),
        ({"url": HOOK, "bogus": 1}, "bogus", None),
        ({}, "url", None),
    ]:
        resp = await client.post("/v1/webhook-endpoints", json=body, headers=auth)
        assert resp.status == 422, body
        err = (await resp.json())["error"]
        assert field in [d["field"] for d in err["details"]], err
        if "events" in body and body["events"]:
            # The field's message lists the valid types.
            assert "call.completed" in err["details"][0]["message"]
        assert code is None or err["code"] == code


async def test_private_urls_are_refused_unless_allowed(relay, database):
    client = await relay(allow_private_webhooks=False)
    auth = await key_headers(database)
    for url in ("http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "http://printer.local/x"):
        resp = await client.post("/v1/webhook-endpoints", json={"url": url}, headers=auth)
        assert resp.status == 422, url
        err = (await resp.json())["error"]
        assert (err["code"], err["field"]) == ("invalid_webhook_url", "url")
    resp = await client.post("/v1/webhook-endpoints", json={"url": HOOK}, headers=auth)
    assert resp.status == 201
    endpoint = await resp.json()
    resp = await client.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}",
        json={"url": "http://192.168.0.9/"},
        headers=auth,
    )
    assert resp.status == 422


async def test_list_pages_newest_first(client, auth):
    made = [(await add_endpoint(client, auth, f"{HOOK}/{i}"))["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = await (await client.get("/v1/webhook-endpoints", params=params, headers=auth)).json()
        seen += [e["id"] for e in body["data"]]
        assert all("secret" not in e for e in body["data"])
        if not body["hasMore"]:
            break
        cursor = body["nextCursor"]
    assert seen == made[::-1]
    resp = await client.get("/v1/webhook-endpoints", params={"cursor": "nope"}, headers=auth)
    assert resp.status == 422


async def test_patch_changes_only_what_is_sent(client, auth):
    endpoint = await add_endpoint(client, auth, HOOK, events=["call.failed"], description="a")
    path = f"/v1/webhook-endpoints/{endpoint['id']}"
    body = await (await client.patch(path, json={"description": "b"}, headers=auth)).json()
    assert (body["description"], body["events"], body["url"]) == ("b", ["call.failed"], HOOK)
    body = await (await client.patch(path, json={"events": None}, headers=auth)).json()
    assert body["events"] is None  # null: every type
    body = await (await client.patch(path, json={"enabled": False}, headers=auth)).json()
    assert (body["enabled"], body["disabledReason"]) == (False, "Disabled through the API.")
    body = await (
        await client.patch(path, json={"enabled": True, "url": HOOK + "/v2"}, headers=auth)
    ).json()
    assert (body["enabled"], body["disabledReason"], body["url"]) == (True, None, HOOK + "/v2")
    for bad in ({"url": None}, {"enabled": None}, {"events": ["nope"]}):
        assert (await client.patch(path, json=bad, headers=auth)).status == 422, bad
    assert body["updatedAt"] >= body["createdAt"]


async def test_delete_removes_the_endpoint_and_its_deliveries(client, auth, database, receiver):
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "c"))
    await settled(client, auth, endpoint["id"], 1)
    path = f"/v1/webhook-endpoints/{endpoint['id']}"
    resp = await client.delete(path, headers=auth)
    assert resp.status == 200
    assert await resp.json() == {
        "id": endpoint["id"],
        "object": "webhook_endpoint",
        "deleted": True,
    }
    assert (await client.get(path, headers=auth)).status == 404
    assert (await client.delete(path, headers=auth)).status == 404
    async with database.session() as session:
        assert (await session.execute(select(WebhookDelivery))).first() is None


async def test_deliveries_list_filters_and_pages(client, auth, database, receiver):
    endpoint = await add_endpoint(client, auth, receiver.url)
    await emit_events(
        database,
        await project_id(database),
        ("call.queued", "a"),
        ("call.connecting", "a"),
        ("call.queued", "b"),
    )
    await settled(client, auth, endpoint["id"], 3)
    path = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
    everything = (await (await client.get(path, headers=auth)).json())["data"]
    assert [(d["orderingKey"], d["eventType"]) for d in everything] == [
        ("b", "call.queued"),
        ("a", "call.connecting"),
        ("a", "call.queued"),
    ]
    assert all(d["status"] == "succeeded" for d in everything)
    queued = await (
        await client.get(path, params={"eventType": "call.queued"}, headers=auth)
    ).json()
    assert len(queued["data"]) == 2
    failed = await (await client.get(path, params={"status": "failed"}, headers=auth)).json()
    assert failed["data"] == []
    first = await (await client.get(path, params={"limit": 2}, headers=auth)).json()
    rest = await (
        await client.get(path, params={"limit": 2, "cursor": first["nextCursor"]}, headers=auth)
    ).json()
    assert [d["id"] for d in first["data"] + rest["data"]] == [d["id"] for d in everything]
    assert (await client.get(path, params={"status": "lost"}, headers=auth)).status == 422


async def test_retry_of_an_unknown_delivery_is_404(client, auth):
    endpoint = await add_endpoint(client, auth, HOOK)
    resp = await client.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/msg_nope/retry", headers=auth
    )
    assert resp.status == 404


async def test_another_projects_endpoints_are_404(client, auth, make_key, database, receiver):
    mine = await add_endpoint(client, auth, receiver.url)
    await emit_events(database, await project_id(database), ("call.queued", "c"))
    [delivery] = await settled(client, auth, mine["id"], 1)
    other = await make_key("proj-b")
    base = f"/v1/webhook-endpoints/{mine['id']}"
    for method, path, body in [
        ("GET", base, None),
        ("PATCH", base, {"description": "mine now"}),
        ("DELETE", base, None),
        ("GET", base + "/deliveries", None),
        ("POST", f"{base}/deliveries/{delivery['id']}/retry", None),
    ]:
        resp = await client.request(method, path, json=body, headers=other)
        assert resp.status == 404, (method, path)
    listed = await (await client.get("/v1/webhook-endpoints", headers=other)).json()
    assert listed["data"] == []
    # Another project's endpoint never sees this project's events either.
    theirs = await add_endpoint(client, other, receiver.url)
    await emit_events(database, await project_id(database), ("call.connecting", "c"))
    await settled(client, auth, mine["id"], 2)
    resp = await client.get(f"/v1/webhook-endpoints/{theirs['id']}/deliveries", headers=other)
    assert (await resp.json())["data"] == []


async def test_rotated_secret_signs_with_both_during_the_grace_then_only_the_new(
    client, auth, database, receiver
):
    endpoint = await add_endpoint(client, auth, receiver.url)
    old = endpoint["secret"]
    resp = await client.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret",
        json={"graceSeconds": 3},
        headers=auth,
    )
    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    assert rotated["id"] == endpoint["id"]
    until = datetime.fromisoformat(rotated["previousSecretExpiresAt"].replace("Z", "+00:00"))
    got = await client.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=auth)
    assert "secret" not in await got.json()

    project = await project_id(database)
    await emit_events(database, project, ("call.queued", "c1"))
    [during] = await receiver.wait_count(1)
    assert len(during.headers["webhook-signature"].split()) == 2
    assert during.verify(old)["type"] == "call.queued"
    assert during.verify(new)["type"] == "call.queued"

    await asyncio.sleep((until - datetime.now(UTC)).total_seconds() + 0.1)
    await emit_events(database, project, ("call.queued", "c2"))
    after = (await receiver.wait_count(2))[1]
    assert len(after.headers["webhook-signature"].split()) == 1
    assert after.verify(new)["data"]["callId"] == "c2"
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


async def test_rotating_with_no_grace_drops_the_old_secret_at_once(
    client, auth, database, receiver
):
    endpoint = await add_endpoint(client, auth, receiver.url)
    path = f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret"
    first = await (await client.post(path, headers=auth)).json()  # no body: the default grace
    assert first["previousSecretExpiresAt"] is not None
    resp = await client.post(path, json={"graceSeconds": 0}, headers=auth)
    assert resp.status == 200, await resp.text()
    second = await resp.json()
    assert second["previousSecretExpiresAt"] is None

    await emit_events(database, await project_id(database), ("call.queued", "c"))
    [got] = await receiver.wait_count(1)
    assert got.verify(second["secret"])["type"] == "call.queued"
    for stale in (endpoint["secret"], first["secret"]):
        with pytest.raises(WebhookVerificationError):
            got.verify(stale)
    for bad in ({"graceSeconds": -1}, {"graceSeconds": 8 * 24 * 3600}, {"grace": 5}):
        assert (await client.post(path, json=bad, headers=auth)).status == 422, bad


async def test_another_projects_endpoint_secret_cannot_be_rotated(client, auth, make_key, database):
    endpoint = await add_endpoint(client, auth, HOOK)
    other = await make_key("proj-b")
    path = f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret"
    resp = await client.post(path, json={"graceSeconds": 0}, headers=other)
    assert resp.status == 404
    async with database.session() as session:
        row = await session.get(WebhookEndpoint, endpoint["id"])
        assert (row.secret, row.previous_secret) == (endpoint["secret"], None)
