"""API keys: how they are presented, refused, revoked, scoped and rate-limited."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update

from relay.app import ROUTERS
from relay.auth import hash_key
from relay.config import Settings
from relay.ratelimit import RateLimiter
from relay.state import APP_STATE
from relay.store.models import ApiKey, utcnow

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}
SECRET_ENDPOINTS = [
    (ep.method, ep.path) for router in ROUTERS for ep in router.endpoints if ep.auth == "secret"
]


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["requestId"] == resp.headers["X-Request-Id"]
    return body["error"]


async def test_bearer_and_x_api_key_are_both_accepted(client, raw_key):
    raw = await raw_key("proj-a")
    for headers in (
        {"Authorization": f"Bearer {raw}"},
        {"Authorization": f"bearer {raw}"},
        {"X-API-Key": raw},
        {"X-API-Key": raw, "Authorization": "Basic dXNlcjpwYXNz"},  # e.g. a proxy's own auth
    ):
        resp = await client.get("/v1/agents", headers=headers)
        assert resp.status == 200, headers
        assert (await resp.json())["object"] == "list"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"X-API-Key": ""}, {"Authorization": "Basic dXNlcg=="}],
    ids=["no-header", "empty-bearer", "empty-x-api-key", "other-scheme"],
)
async def test_missing_key_is_401_unauthorized(client, headers):
    resp = await client.get("/v1/agents", headers=headers)
    err = await error_of(resp, 401)
    assert err["code"] == "unauthorized"
    assert "Authorization: Bearer" in err["message"]
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="conversation-relay"'


@pytest.mark.parametrize(
    "key",
    [
        "garbage",
        "sk_" + "A" * 32,  # well-formed, never issued
        "pk_" + "A" * 32,
        "sk_" + "A" * 300,  # too long to be ours
    ],
    ids=["garbage", "unknown-secret", "unknown-publishable", "too-long"],
)
async def test_unknown_or_garbage_key_is_401_invalid_api_key(client, key):
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        resp = await client.get("/v1/agents", headers=headers)
        err = await error_of(resp, 401)
        assert err["code"] == "invalid_api_key"
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="conversation-relay", error="invalid_token"'
        )


async def test_revoked_key_is_refused_once_the_cache_expires(client, app_client, raw_key, database):
    raw = await raw_key("proj-a")
    headers = {"X-API-Key": raw}
    assert (await client.get("/v1/agents", headers=headers)).status == 200

    async with database.session() as session:
        await session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(raw)).values(revoked_at=utcnow())
        )

    # A fresh process has no cache: refused at once.
    fresh = await app_client()
    err = await error_of(await fresh.get("/v1/agents", headers=headers), 401)
    assert err["code"] == "invalid_api_key"

    # The running one refuses as soon as its cache entry is gone.
    client.server.app[APP_STATE].key_cache.clear()
    err = await error_of(await client.get("/v1/agents", headers=headers), 401)
    assert err["code"] == "invalid_api_key"


def test_route_table_has_the_secret_endpoints():
    declared = set(SECRET_ENDPOINTS)
    for expected in [
        ("POST", "/v1/agents"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/agents/{agent_id}"),
        ("PATCH", "/v1/agents/{agent_id}"),
        ("DELETE", "/v1/agents/{agent_id}"),
        ("POST", "/v1/agents/{agent_id}/rotate-webhook-secret"),
        ("POST", "/v1/numbers"),
        ("POST", "/v1/numbers/import"),
        ("GET", "/v1/numbers"),
        ("GET", "/v1/numbers/{number_id}"),
        ("PATCH", "/v1/numbers/{number_id}"),
        ("DELETE", "/v1/numbers/{number_id}"),
    ]:
        assert expected in declared


@pytest.mark.parametrize(
    ("method", "path"), SECRET_ENDPOINTS, ids=[f"{m} {p}" for m, p in SECRET_ENDPOINTS]
)
async def test_publishable_key_is_403_on_secret_endpoints(client, raw_key, method, path):
    secret = {"X-API-Key": await raw_key("proj-a")}
    agent = await (await client.post("/v1/agents", json=AGENT, headers=secret)).json()
    number = await (
        await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=secret)
    ).json()
    ids = {"agent_id": agent["id"], "number_id": number["id"]}
    # Ids of objects this test does not make: the key must be refused before any lookup.
    url = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x_missing"), path)
    pk = await raw_key("proj-a", kind="publishable", channels=["web", "phone"])

    payloads = {
        ("POST", "/v1/agents"): AGENT,
        ("POST", "/v1/numbers"): {},
        ("POST", "/v1/numbers/import"): {
            "provider": "twilio",
            "phoneNumber": "+14155550123",
            "credentialsRef": "main",
        },
        ("PATCH", "/v1/agents/{agent_id}"): {"name": "Mallory"},
        ("PATCH", "/v1/numbers/{number_id}"): {"agentId": None},
        ("POST", "/v1/agents/{agent_id}/rotate-webhook-secret"): {},
    }
    kwargs = {"json": payloads[(method, path)]} if (method, path) in payloads else {}
    resp = await client.request(method, url, headers={"Authorization": f"Bearer {pk}"}, **kwargs)
    err = await error_of(resp, 403)
    assert err["code"] == "publishable_key_not_allowed"

    # ... and it changed nothing.
    agents = (await (await client.get("/v1/agents", headers=secret)).json())["data"]
    assert [(a["id"], a["name"], a["numberIds"]) for a in agents] == [
        (agent["id"], "Ava", [number["id"]])
    ]
    numbers = (await (await client.get("/v1/numbers", headers=secret)).json())["data"]
    assert [n["id"] for n in numbers] == [number["id"]]


async def test_rate_limit_answers_429_with_retry_after_per_key(app_client, raw_key):
    # One token per 60 s, so "quick" holds even on a loaded machine (at 1/s, three requests
    # that take over a second between them would see a refill).
    client = await app_client(Settings(rate_limit_per_second=1 / 60, rate_limit_burst=2))
    first = {"X-API-Key": await raw_key("proj-a")}
    second = {"X-API-Key": await raw_key("proj-a")}
    assert (await client.get("/v1/agents", headers=first)).status == 200
    assert (await client.get("/v1/agents", headers=first)).status == 200
    resp = await client.get("/v1/agents", headers=first)
    err = await error_of(resp, 429)
    assert err["code"] == "rate_limited"
    retry_after = resp.headers["Retry-After"]
    assert re.fullmatch(r"[0-9]+", retry_after), retry_after
    assert 1 <= int(retry_after) <= 60  # the seconds until the next token

    # Another key, even of the same project, has its own bucket.
    assert (await client.get("/v1/agents", headers=second)).status == 200
    assert (await client.get("/v1/agents", headers=second)).status == 200
    assert (await client.get("/v1/agents", headers=second)).status == 429


def test_rate_limiter_refills_at_rate_up_to_burst():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: the next token comes after 1/rate seconds.
    assert limiter.take("k", now=10.0) == pytest.approx(0.5)
    # A refused take spends nothing; a quarter second refills half a token.
    assert limiter.take("k", now=10.25) == pytest.approx(0.25)
    assert limiter.take("k", now=10.5) == 0.0
    assert limiter.take("k", now=10.5) == pytest.approx(0.5)
    # Other keys are untouched.
    assert limiter.take("other", now=10.5) == 0.0
    # A long pause refills to the burst, not beyond.
    takes = [limiter.take("k", now=1000.0) for _ in range(4)]
    assert takes[:3] == [0.0, 0.0, 0.0]
    assert takes[3] == pytest.approx(0.5)


@pytest.mark.parametrize(("wait", "header"), [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.2, "2")])
def test_retry_after_header_is_a_positive_whole_number_of_seconds(wait, header):
    assert RateLimiter.retry_after_header(wait) == header


async def test_an_address_presenting_bad_keys_is_slowed_down(client, auth):
    assert (await client.get("/v1/agents", headers=auth)).status == 200
    bad = {"Authorization": "Bearer sk_" + "x" * 40}
    statuses = [(await client.get("/v1/agents", headers=bad)).status for _ in range(20)]
    assert statuses == [401] * 20
    resp = await client.get("/v1/agents", headers=bad)
    assert resp.status == 429
    body = await resp.json()
    assert body["error"]["code"] == "too_many_invalid_keys"
    assert int(resp.headers["Retry-After"]) >= 1
    # a key this node looked up moments ago still works from there: no query to make
    assert (await client.get("/v1/agents", headers=auth)).status == 200
