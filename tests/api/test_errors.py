"""Every error in the one shape {"error": {code, message, field?, details?, requestId}}, plus
the system endpoints (health, readiness, metrics) and request ids."""

from __future__ import annotations

import asyncio
import io
import json
import re

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Settings
from relay.store.db import Database

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}
ERROR_KEYS = {"code", "message", "field", "details", "requestId"}


async def error_of(resp, status: int, code: str) -> dict:
    """Check the one error shape and return its ``error`` object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) <= ERROR_KEYS
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert err["requestId"] == resp.headers["X-Request-Id"]
    assert err["requestId"].startswith("req_")
    return err


async def test_malformed_json_is_400(client, auth):
    resp = await client.post(
        "/v1/agents",
        data=b'{"name": "Ava",',
        headers={**auth, "Content-Type": "application/json"},
    )
    await error_of(resp, 400, "malformed_json")
    resp = await client.post(
        "/v1/agents", data=b"\xff\xfe", headers={**auth, "Content-Type": "application/json"}
    )
    await error_of(resp, 400, "malformed_json")


async def test_json_that_is_not_an_object_is_400(client, auth):
    for raw in (b"[1, 2]", b'"Ava"', b"null", b"3"):
        resp = await client.post(
            "/v1/agents", data=raw, headers={**auth, "Content-Type": "application/json"}
        )
        err = await error_of(resp, 400, "invalid_request")
        assert "JSON object" in err["message"]


async def test_missing_key_is_401(client):
    await error_of(await client.get("/v1/agents"), 401, "unauthorized")


async def test_publishable_key_is_403(client, make_key):
    pk = await make_key("proj-a", kind="publishable", channels=["web"])
    await error_of(await client.get("/v1/agents", headers=pk), 403, "publishable_key_not_allowed")


async def test_unknown_route_and_unknown_id_are_404(client, auth):
    await error_of(await client.get("/v1/nothing-here", headers=auth), 404, "not_found")
    await error_of(await client.get("/nope"), 404, "not_found")
    await error_of(await client.get("/v1/agents/agt_missing", headers=auth), 404, "not_found")
    await error_of(await client.get("/v1/numbers/num_missing", headers=auth), 404, "not_found")


async def test_wrong_method_is_405_with_allow(client, auth):
    resp = await client.put("/v1/agents", json=AGENT, headers=auth)
    err = await error_of(resp, 405, "method_not_allowed")
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed
    assert "GET" in err["message"]


async def test_importing_an_active_number_is_409(client, auth, make_key):
    body = {"provider": "twilio", "phoneNumber": "+14155550123", "credentialsRef": "main"}
    assert (await client.post("/v1/numbers/import", json=body, headers=auth)).status == 201
    err = await error_of(
        await client.post("/v1/numbers/import", json=body, headers=auth), 409, "phone_number_taken"
    )
    assert err["field"] == "phoneNumber"
    # Another project is told what it would be told of a number the account does not own.
    other = await make_key("proj-b")
    await error_of(
        await client.post("/v1/numbers/import", json=body, headers=other),
        422,
        "number_not_owned",
    )


async def test_body_over_one_mebibyte_is_413(client, auth):
    big = io.BytesIO(b'{"name": "' + b"a" * (1024 * 1024) + b'"}')
    resp = await client.post(
        "/v1/agents", data=big, headers={**auth, "Content-Type": "application/json"}
    )
    await error_of(resp, 413, "payload_too_large")
    # Nothing was created.
    assert (await (await client.get("/v1/agents", headers=auth)).json())["data"] == []


async def test_a_body_that_cannot_be_decoded_is_400(client, auth):
    headers = {**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    resp = await client.post("/v1/agents", data=b"not gzip at all", headers=headers)
    err = await error_of(resp, 400, "invalid_request")
    assert "Content-Encoding" in err["message"]


async def test_non_json_body_is_415(client, auth):
    resp = await client.post(
        "/v1/agents", data="name=Ava", headers={**auth, "Content-Type": "text/plain"}
    )
    await error_of(resp, 415, "unsupported_media_type")
    resp = await client.post("/v1/agents", data=b'{"name": "Ava"}', headers=auth)  # no type
    await error_of(resp, 415, "unsupported_media_type")
    # JSON with a charset, or a +json type, is JSON.
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        resp = await client.post(
            "/v1/agents", data=json.dumps(AGENT), headers={**auth, "Content-Type": ctype}
        )
        assert resp.status == 201, ctype


async def test_validation_names_every_field_in_details(client, auth):
    resp = await client.post(
        "/v1/agents",
        json={"name": "", "temperature": 5, "webhookUrl": "not a url", "extra": 1},
        headers=auth,
    )
    err = await error_of(resp, 422, "validation_error")
    fields = [d["field"] for d in err["details"]]
    assert set(fields) == {"name", "temperature", "webhookUrl", "extra"}
    assert err["field"] in fields
    for detail in err["details"]:
        assert detail["code"] and detail["message"]
    for name in ("name", "temperature", "webhookUrl", "extra"):
        assert name in err["message"]


async def test_rate_limited_is_429(app_client, raw_key):
    client = await app_client(Settings(rate_limit_per_second=1 / 60, rate_limit_burst=1))
    headers = {"X-API-Key": await raw_key("proj-a")}
    assert (await client.get("/v1/agents", headers=headers)).status == 200
    resp = await client.get("/v1/agents", headers=headers)
    await error_of(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1


async def test_500_never_leaks_a_trace(app_client):
    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("database password is hunter2")

    def setup(app: web.Application) -> None:
        app.router.add_get("/test/explode", explode)

    client = await app_client(setup=setup)
    resp = await client.get("/test/explode")
    text = await resp.text()
    err = await error_of(resp, 500, "internal_error")
    assert set(err) == {"code", "message", "requestId"}
    assert err["requestId"] in err["message"] or "request id" in err["message"]
    for leak in ("Traceback", "RuntimeError", "hunter2", "explode", ".py"):
        assert leak not in text


def _pool_busy() -> Exception:
    import sqlalchemy.exc

    return sqlalchemy.exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached")


def _connection_lost() -> Exception:
    import sqlalchemy.exc

    lost = ConnectionError("connection is closed")
    return sqlalchemy.exc.DBAPIError("SELECT 1", None, lost, connection_invalidated=True)


@pytest.mark.parametrize(
    ("failure", "code", "leak"),
    [(_pool_busy, "overloaded", "QueuePool"), (_connection_lost, "database_unavailable", "SELECT")],
)
async def test_database_trouble_is_503_to_retry_not_500(app_client, failure, code, leak):
    """Every pooled connection busy, or the request's connection closed by PostgreSQL (a
    restart): the client is told to come back, not that the relay broke."""

    async def fail(request: web.Request) -> web.Response:
        raise failure()

    def setup(app: web.Application) -> None:
        app.router.add_get("/test/fail", fail)

    client = await app_client(setup=setup)
    resp = await client.get("/test/fail")
    err = await error_of(resp, 503, code)
    assert resp.headers["Retry-After"] == "1"
    assert leak not in err["message"]


async def test_request_id_is_echoed_on_success_and_error(client, auth):
    resp = await client.get("/v1/agents", headers={**auth, "X-Request-Id": "trace-abc-123"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "trace-abc-123"

    resp = await client.get("/v1/agents/agt_missing", headers={**auth, "X-Request-Id": "t-404"})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "t-404"
    assert (await resp.json())["error"]["requestId"] == "t-404"

    # Without one, or with one too long to trust, the relay makes its own.
    for headers in (auth, {**auth, "X-Request-Id": "x" * 101}):
        resp = await client.get("/v1/agents", headers=headers)
        assert re.fullmatch(r"req_[0-9a-f]{16}", resp.headers["X-Request-Id"])


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    assert resp.headers["X-Request-Id"].startswith("req_")


async def test_readyz_when_migrations_are_current(client):
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "database": "ok", "migrations": "current"}


async def test_readyz_is_503_when_no_migration_was_applied(app_client):
    client = await app_client(Settings(auto_migrate=False))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["migrations"] == "pending"


async def test_readyz_is_503_when_the_database_is_unreachable(database, aiohttp_client, tmp_path):
    from relay.app import create_app

    url = (
        "postgresql+asyncpg://postgres@127.0.0.1:1/none"
        if not database.is_sqlite
        else f"sqlite+aiosqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    )
    client = await aiohttp_client(create_app(Settings(auto_migrate=False), db=Database(url)))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "unreachable"


def _requests_total(metrics_text: str, method: str, route: str, status: str) -> float:
    wanted = {"method": method, "route": route, "status": status}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "relay_http_requests_total" and sample.labels == wanted:
                return float(sample.value)
    return 0.0


async def test_metrics_count_requests(client, auth):
    before = _requests_total(
        await (await client.get("/metrics")).text(), "GET", "/v1/agents", "200"
    )
    assert (await client.get("/v1/agents", headers=auth)).status == 200
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# TYPE relay_http_requests_total counter" in text
    assert _requests_total(text, "GET", "/v1/agents", "200") == before + 1


async def test_a_request_whose_client_left_counts_as_499_not_a_server_error(app_client):
    # aiohttp cancels a handler whose peer went away (a media socket's caller hanging up):
    # nothing was answered, and the server did not fail.
    async def abandoned(request: web.Request) -> web.Response:
        raise asyncio.CancelledError

    client = await app_client(setup=lambda app: app.router.add_get("/abandoned", abandoned))
    before = await (await client.get("/metrics")).text()
    with pytest.raises(aiohttp.ClientError):
        await client.get("/abandoned")
    after = await (await client.get("/metrics")).text()
    assert _requests_total(after, "GET", "/abandoned", "500") == 0
    assert _requests_total(after, "GET", "/abandoned", "499") == (
        _requests_total(before, "GET", "/abandoned", "499") + 1
    )
