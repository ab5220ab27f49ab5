"""Input limits (``relay.api.limits``): on every route that takes a body, JSON too deep, an
integer no double holds, NaN or Infinity, a NUL or a lone surrogate in text, and oversized
``metadata``/``variables`` answer a stable 4xx code in the one error shape, and nothing is
stored: what the project lists afterwards is what it listed before."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from relay.api.limits import MAX_DEPTH, MAX_INTEGER, MAX_OBJECT_BYTES, MAX_OBJECT_KEYS
from relay.config import Settings
from tests.api.test_errors import error_of
from tests.conftest import deployment_twilio

HOOK = "http://127.0.0.1:9/hook"
SLOT = "@BAD@"
# Each refused value as raw JSON text (NaN and deep nesting cannot come out of json.dumps
# alike), with the status and code it must answer.
BAD_VALUES: dict[str, tuple[str, int, str]] = {
    "deep": ("[" * 200 + "]" * 200, 400, "invalid_json"),
    "deeper than the stack": ("[" * 100_000 + "]" * 100_000, 400, "invalid_json"),
    "just past the depth limit": ("[" * MAX_DEPTH + "]" * MAX_DEPTH, 400, "invalid_json"),
    "2**53": (str(2**53), 400, "invalid_json"),
    "-(2**53)": (str(-(2**53)), 400, "invalid_json"),
    "5000 digits": ("9" * 5000, 400, "invalid_json"),
    "NaN": ("NaN", 400, "invalid_json"),
    "Infinity": ("Infinity", 400, "invalid_json"),
    "-Infinity": ("-Infinity", 400, "invalid_json"),
    "1e400": ("1e400", 400, "invalid_json"),
    "NUL": ('"a\\u0000b"', 422, "invalid_text"),
    "NUL in a key": ('{"a\\u0000": 1}', 422, "invalid_text"),
    "lone surrogate": ('"\\ud800"', 422, "invalid_text"),
}


@pytest.fixture
def settings(twilio_rest) -> Settings:
    return Settings(
        allow_private_webhooks=True,
        rate_limit_per_second=10_000,
        rate_limit_burst=10_000,
        public_url="https://relay.example.com",
        **deployment_twilio(twilio_rest[1]),
    )


@dataclass
class World:
    agent: str
    number: str
    phone: str
    endpoint: str
    call: str


@pytest.fixture
async def world(client, auth) -> World:
    resp = await client.post("/v1/agents", json={"name": "Ava", "webhookUrl": HOOK}, headers=auth)
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    resp = await client.post("/v1/numbers", json={"agentId": agent["id"]}, headers=auth)
    assert resp.status == 201, await resp.text()
    number = await resp.json()
    resp = await client.post(
        "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/events"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    endpoint = await resp.json()
    resp = await client.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "websocket"}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    call = await resp.json()
    return World(agent["id"], number["id"], number["phoneNumber"], endpoint["id"], call["id"])


@dataclass
class Route:
    method: str
    path: str  # formatted with the World's fields
    body: Callable[[World, Any], dict[str, Any]]  # the body, holding the value given
    state: str  # what must read the same afterwards

    def url(self, w: World) -> str:
        return self.path.format(**vars(w))

    def state_url(self, w: World) -> str:
        return self.state.format(**vars(w))


ROUTES: dict[str, Route] = {
    "create agent": Route(
        "POST",
        "/v1/agents",
        lambda w, v: {"name": "Bo", "webhookUrl": HOOK, "metadata": {"crm": v}},
        "/v1/agents",
    ),
    "update agent": Route(
        "PATCH", "/v1/agents/{agent}", lambda w, v: {"metadata": {"crm": v}}, "/v1/agents/{agent}"
    ),
    "rotate webhook secret": Route(
        "POST",
        "/v1/agents/{agent}/rotate-webhook-secret",
        lambda w, v: {"graceSeconds": v},
        "/v1/agents/{agent}",
    ),
    "create number": Route("POST", "/v1/numbers", lambda w, v: {"agentId": v}, "/v1/numbers"),
    "import number": Route(
        "POST",
        "/v1/numbers/import",
        lambda w, v: {"provider": "twilio", "phoneNumber": "+14155550199", "credentialsRef": v},
        "/v1/numbers",
    ),
    "update number": Route(
        "PATCH", "/v1/numbers/{number}", lambda w, v: {"agentId": v}, "/v1/numbers/{number}"
    ),
    "send message": Route(
        "POST",
        "/v1/messages",
        lambda w, v: {"from": w.phone, "to": "+14155550123", "text": v},
        "/v1/messages",
    ),
    "text a sim number": Route(
        "POST",
        "/carriers/sim/sms",
        lambda w, v: {"to": w.phone, "from": "+14155550123", "text": v},
        "/v1/messages",
    ),
    "create call": Route(
        "POST",
        "/v1/calls",
        lambda w, v: {"agentId": w.agent, "connectionType": "websocket", "metadata": {"k": v}},
        "/v1/calls",
    ),
    "create inline call": Route(
        "POST",
        "/v1/calls/inline",
        lambda w, v: {
            "systemPrompt": "Be brief.",
            "connectionType": "websocket",
            "variables": {"v": v},
        },
        "/v1/calls",
    ),
    "reprocess a call": Route(
        "POST", "/v1/calls/{call}/reprocess", lambda w, v: {"postCall": v}, "/v1/calls/{call}"
    ),
    "create webhook endpoint": Route(
        "POST",
        "/v1/webhook-endpoints",
        lambda w, v: {"url": "http://127.0.0.1:9/other", "description": v},
        "/v1/webhook-endpoints",
    ),
    "update webhook endpoint": Route(
        "PATCH",
        "/v1/webhook-endpoints/{endpoint}",
        lambda w, v: {"description": v},
        "/v1/webhook-endpoints/{endpoint}",
    ),
    "update project": Route(
        "PATCH", "/v1/project", lambda w, v: {"recordingRetentionDays": v}, "/v1/project"
    ),
}


def raw_body(body: dict[str, Any], bad: str) -> bytes:
    text = json.dumps(body)
    assert text.count(f'"{SLOT}"') == 1
    return text.replace(f'"{SLOT}"', bad).encode()


async def state_of(client, auth, path: str) -> Any:
    resp = await client.get(path, headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
async def test_every_body_route_refuses_what_json_should_not_hold(client, auth, world, route):
    url, state = route.url(world), route.state_url(world)
    before = await state_of(client, auth, state)
    for name, (bad, status, code) in BAD_VALUES.items():
        resp = await client.request(
            route.method,
            url,
            data=raw_body(route.body(world, SLOT), bad),
            headers={**auth, "Content-Type": "application/json"},
        )
        assert resp.status == status, (name, await resp.text())
        await error_of(resp, status, code)
        assert await state_of(client, auth, state) == before, name


async def test_the_field_is_named_and_the_message_says_why(client, auth):
    async def refused(raw: str, status: int, code: str) -> dict[str, Any]:
        resp = await client.post(
            "/v1/agents", data=raw, headers={**auth, "Content-Type": "application/json"}
        )
        return await error_of(resp, status, code)

    def body(value: str) -> str:
        return f'{{"name": "Bo", "webhookUrl": "{HOOK}", "metadata": {{"crm": {value}}}}}'

    err = await refused(body("NaN"), 400, "invalid_json")
    assert err["field"] == "metadata.crm" and "NaN" in err["message"]
    err = await refused(body(str(2**60)), 400, "invalid_json")
    assert err["field"] == "metadata.crm" and "2**53" in err["message"]
    err = await refused(body("[" * 40 + "]" * 40), 400, "invalid_json")
    assert err["field"].startswith("metadata.crm") and "32" in err["message"]
    err = await refused(body('"x\\u0000"'), 422, "invalid_text")
    assert err["field"] == "metadata.crm" and "NUL" in err["message"]
    assert err["details"] == [
        {"field": "metadata.crm", "code": "invalid_text", "message": err["message"]}
    ]


async def test_values_at_the_limits_are_accepted(client, auth):
    deepest: Any = "end"
    for _ in range(MAX_DEPTH - 2):  # the body and metadata are two levels already
        deepest = [deepest]
    metadata = {
        "deepest": deepest,
        "max": MAX_INTEGER,
        "min": -MAX_INTEGER,
        "float": 1e308,
        "text": "émoji 😀 and \\u0000 written out",
    }
    resp = await client.post(
        "/v1/agents", json={"name": "Bo", "webhookUrl": HOOK, "metadata": metadata}, headers=auth
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["metadata"] == metadata
    listed = await state_of(client, auth, "/v1/agents")
    assert [a["metadata"] for a in listed["data"]] == [metadata]


def fill(size: int) -> dict[str, str]:
    """An object that serializes (compactly) to exactly ``size`` bytes."""
    return {"k": "x" * (size - len('{"k":""}'))}


def byot(field: str) -> Callable[[World, Any], dict[str, Any]]:
    return lambda w, v: {"agentId": w.agent, "connectionType": "websocket", field: v}


def inline(field: str) -> Callable[[World, Any], dict[str, Any]]:
    return lambda w, v: {"systemPrompt": "Hi", "connectionType": "websocket", field: v}


CAPPED: dict[str, tuple[Route, str]] = {
    "agent metadata": (
        Route(
            "POST",
            "/v1/agents",
            lambda w, v: {"name": "Bo", "webhookUrl": HOOK, "metadata": v},
            "/v1/agents",
        ),
        "metadata",
    ),
    "agent update metadata": (
        Route("PATCH", "/v1/agents/{agent}", lambda w, v: {"metadata": v}, "/v1/agents/{agent}"),
        "metadata",
    ),
    "call metadata": (Route("POST", "/v1/calls", byot("metadata"), "/v1/calls"), "metadata"),
    "call variables": (Route("POST", "/v1/calls", byot("variables"), "/v1/calls"), "variables"),
    "inline call metadata": (
        Route("POST", "/v1/calls/inline", inline("metadata"), "/v1/calls"),
        "metadata",
    ),
    "inline call variables": (
        Route("POST", "/v1/calls/inline", inline("variables"), "/v1/calls"),
        "variables",
    ),
}


@pytest.mark.parametrize("case", CAPPED.values(), ids=CAPPED.keys())
async def test_metadata_and_variables_are_capped(client, auth, world, case):
    route, field = case
    url, state = route.url(world), route.state_url(world)
    before = await state_of(client, auth, state)
    code = f"{field}_too_large"
    for obj in ({str(i): i for i in range(MAX_OBJECT_KEYS + 1)}, fill(MAX_OBJECT_BYTES + 1)):
        resp = await client.request(route.method, url, json=route.body(world, obj), headers=auth)
        err = await error_of(resp, 422, code)
        assert err["field"] == field
        assert [d["code"] for d in err["details"]] == [code]
        assert await state_of(client, auth, state) == before
    for obj in ({str(i): i for i in range(MAX_OBJECT_KEYS)}, fill(MAX_OBJECT_BYTES)):
        resp = await client.request(route.method, url, json=route.body(world, obj), headers=auth)
        assert resp.status in (200, 201), await resp.text()


async def test_a_refused_deep_agent_leaves_the_project_listable(client, auth):
    """It used to be stored while its create answered 500; then every list answered 500."""
    metadata = '{"a": ' + "[" * 300 + "]" * 300 + "}"
    deep = f'{{"name": "Bo", "webhookUrl": "{HOOK}", "metadata": {metadata}}}'
    resp = await client.post(
        "/v1/agents", data=deep, headers={**auth, "Content-Type": "application/json"}
    )
    await error_of(resp, 400, "invalid_json")
    assert (await state_of(client, auth, "/v1/agents"))["data"] == []


async def test_nul_in_a_query_is_422_and_in_a_path_is_404(client, auth, world):
    err = await error_of(
        await client.get("/v1/messages", params={"to": "+1415\x00"}, headers=auth),
        422,
        "invalid_text",
    )
    assert err["field"] == "to"
    for path in ("/v1/agents/agt_%00", "/v1/calls/call_%00x", "/v1/numbers/%00"):
        await error_of(await client.get(path, headers=auth), 404, "not_found")
    # Authentication still comes first.
    await error_of(await client.get("/v1/agents/agt_%00"), 401, "unauthorized")
