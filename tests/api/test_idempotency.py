"""``Idempotency-Key`` on the API's POSTs (relay.api.idempotency), on SQLite and PostgreSQL:
a retry gets the first answer, never a second object."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from sqlalchemy import func, select, update

from relay.api import idempotency
from relay.store.models import Agent, IdempotencyKey, utcnow

AGENT = {"name": "Ava", "webhookUrl": "https://example.com/agent"}


def keyed(auth: dict[str, str], key: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


async def agents(database) -> int:
    async with database.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Agent)) or 0)


async def test_the_same_key_and_body_replays_the_first_answer(client, auth, database):
    first = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-1"))
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    # The same JSON, spaced and ordered differently, is the same request.
    body = json.dumps({"webhookUrl": AGENT["webhookUrl"], "name": "Ava"}, indent=2)
    headers = {**keyed(auth, "k-1"), "Content-Type": "application/json"}
    again = await client.post("/v1/agents", data=body, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()  # its id and its secret, shown again
    assert await agents(database) == 1


async def test_another_request_with_the_same_key_is_refused(client, auth, database):
    assert (await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-2"))).status == 201
    for path, body in [
        ("/v1/agents", {**AGENT, "name": "Bea"}),
        ("/v1/webhook-endpoints", {"url": "https://example.com/events"}),
    ]:
        resp = await client.post(path, json=body, headers=keyed(auth, "k-2"))
        assert resp.status == 422
        error = (await resp.json())["error"]
        assert (error["code"], error["field"]) == ("idempotency_key_reused", "Idempotency-Key")
        assert "POST /v1/agents" in error["message"]
    assert await agents(database) == 1


async def test_keys_belong_to_a_project(client, auth, make_key, database):
    other = await make_key("proj-b")
    for headers in (auth, other):
        resp = await client.post("/v1/agents", json=AGENT, headers=keyed(headers, "shared"))
        assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    assert await agents(database) == 2


async def test_a_failed_request_is_not_kept(client, auth, database):
    bad = await client.post("/v1/agents", json={"name": "Ava"}, headers=keyed(auth, "k-3"))
    assert bad.status == 422  # no webhookUrl
    good = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-3"))
    assert good.status == 201 and "Idempotent-Replayed" not in good.headers
    assert await agents(database) == 1


async def test_a_key_that_is_not_printable_ascii_or_too_long_is_refused(client, auth, database):
    for key in ("x" * 256, "caf\u00e9", ""):
        resp = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, key))
        assert resp.status == 400, key
        assert (await resp.json())["error"]["code"] == "invalid_idempotency_key"
    assert await agents(database) == 0


async def test_without_a_key_every_post_creates(client, auth, database):
    for _ in range(2):
        assert (await client.post("/v1/agents", json=AGENT, headers=auth)).status == 201
    assert await agents(database) == 2


async def test_while_the_first_runs_the_same_key_is_in_use(client, auth, database):
    project = (await (await client.get("/v1/project", headers=auth)).json())["id"]
    # The first request, holding the key the way the API does while its handler runs.
    held = await idempotency.claim(database, project, "k-4", "POST", "/v1/agents", AGENT)
    assert isinstance(held, idempotency.Claim)
    resp = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-4"))
    assert resp.status == 409 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "idempotency_key_in_use"
    await held.forget()  # it failed: the key is free again
    resp = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-4"))
    assert resp.status == 201
    assert await agents(database) == 1


async def test_concurrent_requests_with_one_key_create_one_object(client, auth, database):
    answers = await asyncio.gather(
        *(client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-5")) for _ in range(6))
    )
    created = [r for r in answers if r.status == 201 and "Idempotent-Replayed" not in r.headers]
    assert len(created) == 1
    for resp in answers:
        assert resp.status in (201, 409)
        if resp.status == 409:
            assert (await resp.json())["error"]["code"] == "idempotency_key_in_use"
    assert await agents(database) == 1


async def test_a_key_is_kept_24_hours(client, auth, database):
    assert (await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-6"))).status == 201
    async with database.session() as session:
        await session.execute(
            update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=24, minutes=1))
        )
    resp = await client.post(
        "/v1/agents", json={**AGENT, "name": "Bea"}, headers=keyed(auth, "k-6")
    )
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    assert await agents(database) == 2


async def test_a_key_left_running_by_a_dead_relay_runs_again(client, auth, database):
    project = (await (await client.get("/v1/project", headers=auth)).json())["id"]
    held = await idempotency.claim(database, project, "k-7", "POST", "/v1/agents", AGENT)
    assert isinstance(held, idempotency.Claim)  # and then the relay died
    async with database.session() as session:
        await session.execute(
            update(IdempotencyKey).values(created_at=utcnow() - timedelta(minutes=6))
        )
    resp = await client.post("/v1/agents", json=AGENT, headers=keyed(auth, "k-7"))
    assert resp.status == 201
    assert await agents(database) == 1


async def test_a_call_created_twice_with_one_key_is_one_call(client, auth):
    agent = await (await client.post("/v1/agents", json=AGENT, headers=auth)).json()
    body = {"agentId": agent["id"], "connectionType": "websocket"}
    first = await client.post("/v1/calls", json=body, headers=keyed(auth, "call-1"))
    again = await client.post("/v1/calls", json=body, headers=keyed(auth, "call-1"))
    assert (first.status, again.status) == (201, 201)
    assert (await again.json())["id"] == (await first.json())["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    listed = await (await client.get("/v1/calls", headers=auth)).json()
    assert len(listed["data"]) == 1


async def test_the_document_names_the_header_on_every_post_of_the_api(client):
    doc = await (await client.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        post = item.get("post")
        if post is None or not path.startswith("/v1/"):
            continue
        names = [p["name"] for p in post.get("parameters", [])]
        assert "Idempotency-Key" in names, path
        assert {"409", "422"} <= set(post["responses"]), path


async def test_the_database_keeps_neither_the_key_nor_a_secret_it_answered(client, auth, database):
    resp = await client.post("/v1/keys", json={"name": "ci"}, headers=keyed(auth, "k-secret"))
    assert resp.status == 201, await resp.text()
    secret = (await resp.json())["key"]
    async with database.session() as session:
        [row] = (await session.execute(select(IdempotencyKey))).scalars()
    assert row.key != "k-secret" and len(row.key) == 64
    assert row.body is not None and secret not in row.body and "sk_" not in row.body
    again = await client.post("/v1/keys", json={"name": "ci"}, headers=keyed(auth, "k-secret"))
    assert (await again.json())["key"] == secret  # shown again, to the same retry only
