"""CORS: the routes a publishable key may call from a page answer browsers, checked against
the key's allowed origins; every other route sends no CORS header at all."""

from __future__ import annotations

import re

import pytest

from relay.api.cors import PUBLIC_ROUTES
from relay.app import ROUTERS
from relay.config import Settings
from tests.api.test_calls import BASE, new_agent
from tests.api.test_publishable import calls_stored

PAGE = "https://shop.example.com"
OTHER = "https://evil.example.net"


@pytest.fixture
def settings() -> Settings:
    return Settings(**BASE)  # public URL https://relay.example.com


def cors_headers(resp) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


async def page_key(client, auth, origins=(PAGE,)) -> dict[str, str]:
    body = {"kind": "publishable", "channels": ["websocket"]}
    if origins:
        body["allowedOrigins"] = list(origins)
    resp = await client.post("/v1/keys", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def test_a_preflight_is_answered_without_a_key(client):
    resp = await client.options(
        "/v1/calls",
        headers={
            "Origin": OTHER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == OTHER
    assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key"} <= allowed
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in resp.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in resp.headers  # keys, never cookies


async def test_a_page_the_key_lists_may_call_and_read_the_answer(client, auth, database):
    agent = await new_agent(client, auth)
    pk = await page_key(client, auth)
    body = {"agentId": agent["id"], "connectionType": "websocket"}
    resp = await client.post("/v1/calls", json=body, headers={**pk, "Origin": PAGE})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
    assert "Origin" in resp.headers["Vary"]
    assert await calls_stored(database) == 1


@pytest.mark.parametrize("listed", [True, False], ids=["other-origins-listed", "none-listed"])
async def test_a_page_the_key_does_not_list_is_refused_and_nothing_is_done(
    client, auth, database, listed
):
    agent = await new_agent(client, auth)
    pk = await page_key(client, auth, origins=(PAGE,) if listed else ())
    body = {"agentId": agent["id"], "connectionType": "websocket"}
    for origin in (OTHER, "null", PAGE.upper(), PAGE + ":443", "http://shop.example.com"):
        if not listed and origin != OTHER:
            continue
        resp = await client.post("/v1/calls", json=body, headers={**pk, "Origin": origin})
        assert resp.status == 403, (origin, await resp.text())
        err = (await resp.json())["error"]
        assert err["code"] == "origin_not_allowed"
        assert origin in err["message"] and "allowedOrigins" in err["message"]
        # The page may read why (a refusal has done nothing), not just see a network error.
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert await calls_stored(database) == 0


async def test_without_an_origin_or_from_the_relays_own_a_key_is_not_origin_checked(
    client, auth, database
):
    """Servers and curl send no Origin (and could send any); the relay's own pages (/docs)
    are not cross-origin."""
    agent = await new_agent(client, auth)
    pk = await page_key(client, auth, origins=())
    body = {"agentId": agent["id"], "connectionType": "websocket"}
    own = f"http://{client.host}:{client.port}"
    for headers in ({}, {"Origin": "https://relay.example.com"}, {"Origin": own}):
        resp = await client.post("/v1/calls", json=body, headers={**pk, **headers})
        assert resp.status == 201, (headers, await resp.text())
    assert await calls_stored(database) == 3


async def test_a_secret_key_from_a_page_is_refused(client, auth, database):
    agent = await new_agent(client, auth)
    body = {"agentId": agent["id"], "connectionType": "websocket"}
    resp = await client.post("/v1/calls", json=body, headers={**auth, "Origin": PAGE})
    assert resp.status == 403, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "secret_key_in_browser"
    assert "rotate" in err["message"]
    assert await calls_stored(database) == 0
    resp = await client.post("/v1/calls", json=body, headers=auth)  # from a server: fine
    assert resp.status == 201, await resp.text()


def declared_routes() -> list[tuple[str, str]]:
    return [(ep.method, re.sub(r"{\w+}", "x_1", ep.path)) for r in ROUTERS for ep in r.endpoints]


async def test_no_other_route_sends_cors_headers(client, auth):
    """Not on the secret routes, not on the same path's other methods (GET /v1/calls), not
    on the operational ones: browsers neither send nor read such requests from a page."""
    others = [(m, p) for m, p in declared_routes() if m not in PUBLIC_ROUTES.get(p, ())] + [
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/nothing"),
    ]
    assert ("GET", "/v1/calls") in others and ("POST", "/v1/calls/inline") in others
    for method, path in others:
        for headers in ({"Origin": PAGE}, {"Origin": PAGE, **auth}):
            resp = await client.request(method, path, headers=headers)
            assert cors_headers(resp) == {}, (method, path, resp.status)
        resp = await client.options(
            path, headers={"Origin": PAGE, "Access-Control-Request-Method": method}
        )
        if path not in PUBLIC_ROUTES:
            assert resp.status in (404, 405), (path, resp.status)
            assert cors_headers(resp) == {}, (path, resp.status)


def test_every_route_a_publishable_key_may_call_speaks_cors_and_no_secret_one_does():
    """Every route a pk_ may call speaks CORS; none that needs a secret key does (a route
    that takes no key, such as a token URL a page posts to, may too)."""
    auth = {(ep.method, ep.path): ep.auth for r in ROUTERS for ep in r.endpoints}
    public = {(m, p) for p, methods in PUBLIC_ROUTES.items() for m in methods}
    assert {route for route, kind in auth.items() if kind == "any"} <= public
    assert not {route for route in public if auth.get(route) == "secret"}
